# Only for studies that name BIG-bench tasks: the package index no longer serves the sdist, so a
# refusal or a missing local copy (`bigbench.sdist`) must show first, on the console, not after hours.
rule fetch_bigbench:
    output:
        "resources/bigbench-1.0.0.tar.gz",
    log:
        "logs/fetch_bigbench.log",
    priority: FETCH_PRIORITY
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=BIGBENCH_SOURCE_SETTINGS,
    shell:
        "layerprune fetch-bigbench --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


# The project's own tasks (layerprune.data.builtin), built from installed packages; the params hold
# their provenance (package versions), so an upgraded package rebuilds them and what follows.
rule build_task:
    output:
        builtin_file("{name}"),
    log:
        "logs/build_task/{name}.log",
    wildcard_constraints:
        name=BUILTIN_TASK_PATTERN,
    conda:
        "../../envs/layerprune.yaml"
    params:
        provenance=lambda wc: builtin_provenance_json(wc.name),
    shell:
        "layerprune build-task --name {wildcards.name:q} --out {output:q} > {log:q} 2>&1"


rule extract_bigbench:
    input:
        sdist="resources/bigbench-1.0.0.tar.gz",
    output:
        "resources/bigbench/{bbtask}/task.json",
    log:
        "logs/extract_bigbench/{bbtask}.log",
    wildcard_constraints:
        bbtask="[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*",
    conda:
        "../../envs/layerprune.yaml"
    shell:
        "layerprune extract-bigbench --sdist {input.sdist:q} --task {wildcards.bbtask:q} --out {output:q} > {log:q} 2>&1"


ruleorder: prepare_lm_eval_task > prepare_task


rule prepare_lm_eval_task:
    output:
        shared_path("tasks/{fp}/{task}.json"),
    log:
        "logs/prepare_lm_eval_task/{fp}/{task}.log",
    wildcard_constraints:
        task=LM_EVAL_TASK_PATTERN,
    conda:
        "../../envs/layerprune.yaml"
    params:
        lm_eval_task=lambda wc: config["tasks"][wc.task]["lm_eval_task"],
        num_fewshot=lambda wc: config["tasks"][wc.task]["num_fewshot"],
        limit=lambda wc: config["tasks"][wc.task]["limit"],
        metric=lambda wc: config["tasks"][wc.task]["lm_eval_metric"],
        include_path=lambda wc: config["tasks"][wc.task]["lm_eval_include_path"] or "",
        seed=SEED,
    shell:
        "layerprune prepare-lm-eval-task --lm-eval-task {params.lm_eval_task:q} --num-fewshot {params.num_fewshot:q}"
        " --limit {params.limit:q} --metric {params.metric:q} --include-path={params.include_path:q}"
        " --seed {params.seed:q} --out {output:q} > {log:q} 2>&1"


rule prepare_task:
    input:
        task_inputs,
        excluded=excluded_task_files,
    output:
        shared_path("tasks/{fp}/{task}.json"),
    log:
        "logs/prepare_task/{fp}/{task}.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        spec=lambda wc: task_spec_json(wc.task),
        seed=SEED,
    shell:
        "layerprune prepare-task --spec {params.spec:q} --bigbench-dir resources/bigbench"
        " --seed {params.seed:q}"
        " --exclude-task-files {input.excluded:q} --out {output:q} > {log:q} 2>&1"


rule prepare_prompts:
    input:
        prompt_source_inputs(),
    output:
        shared_path("prompts/{fp}.jsonl"),
    log:
        "logs/prepare_prompts/{fp}.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=PROMPT_SET_SETTINGS,
    shell:
        "layerprune prepare-prompts --settings {params.settings:q} --bigbench-dir resources/bigbench"
        " --out {output:q} > {log:q} 2>&1"


rule prepare_calibration:
    input:
        calibration_inputs(),
    output:
        shared_path("calibration/{fp}.jsonl"),
    log:
        "logs/prepare_calibration/{fp}.log",
    conda:
        "../../envs/layerprune.yaml"
    params:
        settings=CALIBRATION_SETTINGS,
    shell:
        "layerprune prepare-calibration --settings {params.settings:q} --bigbench-dir resources/bigbench"
        " --out {output:q} > {log:q} 2>&1"


rule materialize:
    output:
        directory(shared_path("models/{fp}/{model}")),
    log:
        "logs/materialize/{fp}/{model}.log",
    benchmark:
        "benchmarks/materialize/{fp}/{model}.tsv"
    conda:
        "../../envs/layerprune.yaml"
    threads: job_threads("materialize")
    resources:
        **job_resources("materialize"),
    params:
        source=lambda wc: model_source_json(wc.model),
    shell:
        "layerprune materialize --source {params.source:q} --out {output:q} > {log:q} 2>&1"
