rule fetch_bigbench:
    output:
        "resources/bigbench-1.0.0.tar.gz",
    shell:
        "layerprune fetch-bigbench --out {output:q}"


rule extract_bigbench:
    input:
        sdist="resources/bigbench-1.0.0.tar.gz",
    output:
        "resources/bigbench/{bbtask}/task.json",
    wildcard_constraints:
        bbtask="[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*",
    shell:
        "layerprune extract-bigbench --sdist {input.sdist:q} --task {wildcards.bbtask:q} --out {output:q}"


ruleorder: prepare_lm_eval_task > prepare_task


rule prepare_lm_eval_task:
    output:
        "results/data/tasks/{task}.json",
    wildcard_constraints:
        task=LM_EVAL_TASK_PATTERN,
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
        " --seed {params.seed:q} --out {output:q}"


rule prepare_task:
    input:
        task_inputs,
    output:
        "results/data/tasks/{task}.json",
    params:
        spec=lambda wc: json.dumps(config["tasks"][wc.task], sort_keys=True),
        seed=SEED,
    shell:
        "layerprune prepare-task --spec {params.spec:q} --bigbench-dir resources/bigbench --seed {params.seed:q}"
        " --out {output:q}"


rule prepare_prompts:
    input:
        prompt_source_inputs(),
    output:
        "results/data/prompts.jsonl",
    params:
        settings=PROMPT_SET_SETTINGS,
    shell:
        "layerprune prepare-prompts --settings {params.settings:q} --bigbench-dir resources/bigbench --out {output:q}"


rule prepare_calibration:
    input:
        [bigbench_file(task) for task in config["scoring"]["calibration"]["bigbench_tasks"]],
    output:
        "results/data/calibration.jsonl",
    params:
        settings=CALIBRATION_SETTINGS,
    shell:
        "layerprune prepare-calibration --settings {params.settings:q} --bigbench-dir resources/bigbench"
        " --out {output:q}"


rule materialize:
    output:
        directory("results/models/{model}/dense"),
    params:
        source=lambda wc: json.dumps(config["models"][wc.model]["source"], sort_keys=True),
    threads: job_threads("materialize")
    resources:
        **job_resources("materialize"),
    shell:
        "layerprune materialize --source {params.source:q} --out {output:q}"
