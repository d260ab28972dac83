"""The study's configuration: its settings (declared once per stage), the schema derived from them, the
checks a plan runs before any job, how jobs are launched, and the BIG-bench task names as data."""
