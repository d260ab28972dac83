if PROMPTS["source"] == "magpie":

    # Prompt-free SGR: the dense model writes its own user turns (no reference answers).
    rule magpie_prompts:
        input:
            model=lambda wc: dense_checkpoint(wc.model),
        output:
            prompts=model_prompt_set("{model}"),
            stats=study_path("data/prompts/{model}.stats.json"),
        log:
            study_log("magpie_prompts", "{model}"),
        benchmark:
            study_benchmark("magpie_prompts", "{model}")
        conda:
            "../../envs/layerprune-gpu.yaml"
        threads: job_threads("selfgen")
        resources:
            **job_resources("selfgen"),
        params:
            settings=MAGPIE_SETTINGS,
        shell:
            "layerprune magpie-prompts --model {input.model:q} --settings {params.settings:q} --threads {threads}"
            " --out {output.prompts:q} --stats {output.stats:q} > {log:q} 2>&1"

else:

    localrules:
        filter_prompts,

    # The shared prompt set, cut to what fits each model's token limit; `data` and `sgr` both use this file.
    rule filter_prompts:
        input:
            model=lambda wc: dense_checkpoint(wc.model),
            prompts=prompt_set_file(),
        output:
            prompts=shared_path("filtered/{fp}/{model}.jsonl"),
            stats=shared_path("filtered/{fp}/{model}.stats.json"),
        log:
            shared_log("filter_prompts", "{fp}/{model}"),
        conda:
            "../../envs/layerprune.yaml"
        params:
            settings=PROMPT_FILTER_SETTINGS,
        shell:
            "layerprune filter-prompts --prompts {input.prompts:q} --model {input.model:q}"
            " --settings {params.settings:q} --out {output.prompts:q} --stats {output.stats:q} > {log:q} 2>&1"


# Generated once per model by the dense model, shared by every method and ratio.
rule selfgen:
    input:
        model=lambda wc: dense_checkpoint(wc.model),
        prompts=lambda wc: model_prompt_set(wc.model),
    output:
        dataset=selfgen_file("{model}"),
        stats=study_path("selfgen/{model}.stats.json"),
    log:
        study_log("selfgen", "{model}"),
    benchmark:
        study_benchmark("selfgen", "{model}")
    conda:
        "../../envs/layerprune-gpu.yaml"
    threads: job_threads("selfgen")
    resources:
        **job_resources("selfgen"),
    params:
        settings=SELFGEN_SETTINGS,
    shell:
        "layerprune selfgen --model {input.model:q} --prompts {input.prompts:q} --settings {params.settings:q}"
        " --threads {threads} --out {output.dataset:q} --stats {output.stats:q} > {log:q} 2>&1"
