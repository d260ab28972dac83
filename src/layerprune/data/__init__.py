"""The data the pipeline makes: tasks built from installed packages, BIG-bench extraction, prompt sets,
calibration and heal texts, self-generated responses, Magpie prompts."""
