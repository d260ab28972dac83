"""Every stage's settings, each declared once: type, default, help and allowed values.

One frozen dataclass per kind of job, in the style of TRL's `SFTConfig`: each field is
`setting(default, help=..., choices=..., schema=...)` and names where it lives in the
config (`config=`, default: the class's section + the field name). Everything else is
derived from these declarations:

* the config schema's settings blocks: `python -m layerprune.config.settings --write-schema`
  rewrites the marked blocks of src/layerprune/config/config.schema.yaml (package data;
  workflow/schemas/config.schema.yaml links to it) (a test fails when
  they are stale), so a setting's type, default, bounds and help are written here only;
* the CLI flags of each stage (`add_settings_arguments`: `--lora-r 16`, or all at once
  as `--settings '{"lora_r": 16, ...}'`);
* a rule's one `settings` param (`settings_json`, used by workflow/rules/*.smk): the
  settings that rule's job uses, and no other, so Snakemake's params trigger re-runs
  exactly the jobs a changed setting reaches;
* the object the stage function receives.

The package, by what each module does (a reader following a config key finds its field in `stages`):
`fields` (the `setting(...)` declaration and the checked, frozen `StageSettings` base), `stages` (one class
per kind of job), `adapters` (config -> settings, command line -> settings, the schema's defaults) and
`schema` (the generated blocks of the config schema).

Importing this package imports no torch nor any stage's code: the workflow reads it while building the DAG.
"""

from layerprune.config.settings.adapters import (  # noqa: F401 - the package's names
    add_settings_arguments,
    apply_defaults,
    distill_settings_json,
    load_schema,
    lookup,
    settings_from_args,
    settings_from_config,
    settings_json,
    study_settings,
    training_seeds,
)
from layerprune.config.settings.fields import (  # noqa: F401 - the package's names
    MISSING,
    SCHEMA_FILE,
    StageSettings,
    borrow,
    config_path,
    setting,
)
from layerprune.config.settings.schema import (  # noqa: F401 - the package's names
    BEGIN,
    END,
    field_schema,
    home_fields,
    main,
    recovery_methods_block,
    registry_enums,
    render_schema,
)
from layerprune.config.settings.stages import (  # noqa: F401 - the package's names
    CALIBRATED,
    CHUNKED,
    DIVERGENCE_BETA,
    HEAL_SOURCE_SCHEMA,
    PRECISIONS,
    PROBED,
    RECOVERY_FIELDS,
    STAGES,
    STOP_AT_MAX_RATIO,
    BigbenchSourceSettings,
    CalibrationSettings,
    DistillSettings,
    EvaluationSettings,
    HealSettings,
    MagpieSettings,
    OnModel,
    PromptFilterSettings,
    PromptSetSettings,
    PruneSettings,
    RecoverySettings,
    ReportSettings,
    ScoreSettings,
    Seeded,
    SelfgenSettings,
    TrainingSeeds,
    replicate_suffix,
)
