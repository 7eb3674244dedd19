"""Tables, figures and reports written into a run directory."""
