"""`python -m layerprune.settings --write-schema`: rewrite the config schema's generated blocks."""

from layerprune.settings.schema import main

raise SystemExit(main())
