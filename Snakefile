# layerprune: score -> prune -> selfgen -> recover -> evaluate -> aggregate.
# Rules only wire files to the `layerprune` CLI; the logic lives in src/layerprune.

# The study: the config given with --configfile is the whole study (several are merged
# in order); the embedded default config.yaml applies only when none is given. Either
# way `--config key=value` overrides on top. (Snakemake's `configfile:` directive would
# deep-merge a --configfile into the default instead, adding its models and tasks.)
if not workflow.overwrite_configfiles:
    workflow.configfile("config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/prune.smk"
include: "workflow/rules/selfgen.smk"
include: "workflow/rules/recover.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"


# Light jobs run where snakemake runs, never as cluster jobs.
localrules:
    all,
    fetch_bigbench,
    extract_bigbench,
    build_task,
    prepare_task,
    prepare_lm_eval_task,
    prepare_prompts,
    prepare_calibration,
    prepare_heal,
    aggregate,


# Every output of aggregate, plots included: Snakemake skips its params/input checks
# for a job with an output it has no record of, so a new model's or task's plot must
# be requested here for adding a model or a task to re-run aggregate.
rule all:
    input:
        rules.aggregate.output,
