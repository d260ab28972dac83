"""`python -m layerprune.config.settings --write-schema`: rewrite the config schema's generated blocks."""

from layerprune.config.settings.schema import main

raise SystemExit(main())
