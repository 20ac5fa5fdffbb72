"""the experiment harness around rddpo.py: the task, the models, the run, its records and reports (docs/layout.md)."""
