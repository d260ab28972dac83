"""The report: the statistics (retention, paired contrasts, findings), its tables, plots and pages."""
