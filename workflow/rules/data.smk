rule fetch_bigbench:
    output:
        "resources/bigbench-1.0.0.tar.gz",
    shell:
        "layerprune fetch-bigbench --out {output}"


rule extract_bigbench:
    input:
        sdist="resources/bigbench-1.0.0.tar.gz",
    output:
        "resources/bigbench/{bbtask}/task.json",
    wildcard_constraints:
        bbtask="[A-Za-z0-9_]+(/[A-Za-z0-9_]+)*",
    shell:
        "layerprune extract-bigbench --sdist {input.sdist} --task {wildcards.bbtask} --out {output}"


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
        "layerprune prepare-lm-eval-task --lm-eval-task {params.lm_eval_task} --num-fewshot {params.num_fewshot}"
        " --limit {params.limit} --metric {params.metric} --include-path={params.include_path:q}"
        " --seed {params.seed} --out {output}"


rule prepare_task:
    input:
        task_inputs,
    output:
        "results/data/tasks/{task}.json",
    params:
        spec=lambda wc: json.dumps(config["tasks"][wc.task], sort_keys=True),
        seed=SEED,
    shell:
        "layerprune prepare-task --spec {params.spec:q} --bigbench-dir resources/bigbench --seed {params.seed}"
        " --out {output}"


rule prepare_prompts:
    input:
        prompt_source_inputs(),
    output:
        "results/data/prompts.jsonl",
    params:
        source=PROMPTS["source"],
        tasks=PROMPTS.get("bigbench_tasks") or [],
        path=PROMPTS["path"] or "",
        name=PROMPTS["name"] or "",
        split=PROMPTS["split"],
        prompt_fields=PROMPTS["prompt_fields"],
        response_field=PROMPTS["response_field"] or "",
        separator=PROMPTS["separator"],
        num_prompts=PROMPTS["num_prompts"],
        system_prompt=PROMPTS["system_prompt"] or "",
        seed=SEED,
    shell:
        "layerprune prepare-prompts --source {params.source} --bigbench-dir resources/bigbench --tasks {params.tasks}"
        " --path={params.path:q} --name={params.name:q} --split={params.split:q}"
        " --prompt-fields {params.prompt_fields:q} --response-field={params.response_field:q}"
        " --separator={params.separator:q}"
        " --num-prompts {params.num_prompts} --system-prompt={params.system_prompt:q} --seed {params.seed}"
        " --out {output}"


rule prepare_calibration:
    input:
        [bigbench_file(task) for task in config["scoring"]["calibration"]["bigbench_tasks"]],
    output:
        "results/data/calibration.jsonl",
    params:
        tasks=config["scoring"]["calibration"]["bigbench_tasks"],
        num_samples=config["scoring"]["calibration"]["num_samples"],
        seed=SEED,
    shell:
        "layerprune prepare-calibration --bigbench-dir resources/bigbench --tasks {params.tasks}"
        " --num-samples {params.num_samples} --seed {params.seed} --out {output}"


rule materialize:
    output:
        directory("results/models/{model}/dense"),
    params:
        source=lambda wc: json.dumps(config["models"][wc.model]["source"], sort_keys=True),
    threads: job_threads("materialize")
    resources:
        **job_resources("materialize"),
    shell:
        "layerprune materialize --source {params.source:q} --out {output}"
