RECOVERY = config["recovery"]


def recovery_dataset(wildcards):
    """`sgr` trains on the dense model's answers, `data` on the prompt set's references, `heal` on plain text."""
    if wildcards.recovery == "sgr":
        return f"results/selfgen/{wildcards.model}.jsonl"
    if wildcards.recovery == "heal":
        return "results/data/heal.jsonl"
    return model_prompt_set(wildcards.model)


rule prepare_heal:
    input:
        heal_inputs(),
    output:
        "results/data/heal.jsonl",
    params:
        source=json.dumps(RECOVERY["heal"]["source"], sort_keys=True),
        num_texts=RECOVERY["heal"]["num_texts"],
        seed=SEED,
    shell:
        "layerprune prepare-heal --source {params.source:q} --bigbench-dir resources/bigbench"
        " --num-texts {params.num_texts} --seed {params.seed} --out {output}"


rule recover:
    input:
        model="results/pruned/{model}/{method}/{ratio}",
        dataset=recovery_dataset,
    output:
        directory("results/recovered/{model}/{method}/{ratio}/{recovery}"),
    wildcard_constraints:
        recovery="data|sgr|heal",
    params:
        trainer=RECOVERY["trainer"],
        precision=RECOVERY["precision"],
        lora_r=RECOVERY["lora_r"],
        lora_alpha=RECOVERY["lora_alpha"],
        lora_dropout=RECOVERY["lora_dropout"],
        learning_rate=RECOVERY["learning_rate"],
        num_epochs=RECOVERY["num_epochs"],
        batch_size=RECOVERY["batch_size"],
        grad_accum=RECOVERY["grad_accum"],
        max_length=RECOVERY["max_length"],
        warmup_steps=RECOVERY["warmup_steps"],
        lr_scheduler=RECOVERY["lr_scheduler"],
        weight_decay=RECOVERY["weight_decay"],
        adam_beta1=RECOVERY["adam_beta1"],
        adam_beta2=RECOVERY["adam_beta2"],
        completion_only_loss=RECOVERY["completion_only_loss"],
        padding_free=RECOVERY["padding_free"],
        gradient_checkpointing=RECOVERY["gradient_checkpointing"],
        save_steps=RECOVERY["save_steps"],
        save_total_limit=RECOVERY["save_total_limit"],
        report_to=RECOVERY["report_to"],
        max_steps=RECOVERY["max_steps"],
        seed=SEED,
        dtype=DTYPE,
        # one process per GPU (accelerate/torchrun) when resources.recover asks for >1
        launcher=rule_command_prefix(config["resources"], "recover"),
    threads: job_threads("recover")
    resources:
        **job_resources("recover"),
    shell:
        "{params.launcher} recover --model {input.model} --dataset {input.dataset} --out {output}"
        " --recovery {wildcards.recovery} --trainer {params.trainer} --precision {params.precision}"
        " --lora-r {params.lora_r} --lora-alpha {params.lora_alpha}"
        " --lora-dropout {params.lora_dropout} --learning-rate {params.learning_rate}"
        " --num-epochs {params.num_epochs} --batch-size {params.batch_size} --grad-accum {params.grad_accum}"
        " --max-length {params.max_length} --warmup-steps {params.warmup_steps}"
        " --lr-scheduler {params.lr_scheduler} --weight-decay {params.weight_decay}"
        " --adam-beta1 {params.adam_beta1} --adam-beta2 {params.adam_beta2}"
        " --completion-only-loss {params.completion_only_loss} --padding-free {params.padding_free}"
        " --gradient-checkpointing {params.gradient_checkpointing}"
        " --save-steps {params.save_steps} --save-total-limit {params.save_total_limit}"
        " --report-to {params.report_to}"
        " --max-steps {params.max_steps} --seed {params.seed} --dtype {params.dtype} --threads {threads}"
