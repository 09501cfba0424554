"""Fine-tuning on your own data: the sourdough-baker persona data set (``make_data.py`` writes ``data/``)."""
