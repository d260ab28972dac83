"""Plain helpers the test modules share: no fixtures and no tests (those live in conftest.py and test_*.py).

Test modules import from here, never from one another: ``from helpers.models import make_tiny_checkpoint``
(pytest puts tests/ on ``sys.path``; a script outside pytest inserts tests/ itself, as bench/ does).

- models: tiny offline models, tokenizers, checkpoints and the chat template written onto them
- workflow: the real Snakefile in a scratch copy, its dry runs and commands, the tiny study
- plans: configs and checkpoints a plan reads, dry runs of a config, the job counts they must give
- training: what the recovery tests train with and how they call the CLI
- records: prompt records and task JSONs made of CORPUS words
- probes: iterative-pruning probe tasks answered by a tiny model itself
- results: results scored by a rule (the report's statistics), a plot's signature
- aggregate_grid: the aggregate tests' grid of results (two tasks, bi at two ratios and two recoveries)
- report_grid: results with samples, as the report tests build them
- sandbox_probes: programs that try to pass the sandbox's grading or its memory limit
"""
