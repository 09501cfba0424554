"""Fine-tuning on your own data: the sourdough-baker persona data set (``make_data.py`` writes ``data/``) and the study
that trains each method on it through the train job (``python -m studies.own_finetune``)."""
