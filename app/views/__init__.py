"""The app's view-models: what each page shows, computed from models and result files (no streamlit here)."""
