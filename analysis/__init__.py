"""MLflow runs -> tidy tables -> seed-averaged stage tables, statistics, plots and reports."""
