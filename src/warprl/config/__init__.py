"""Every setting as a dataclass field with a default and a one-line doc (cleanrl style).

The same dataclass feeds three places: YAML files (``--config``), command-line flags (generated from the
fields by :mod:`warprl.commands.flags`, so a new setting needs one line here and nothing in the CLI), and the
``config.yaml`` written into each output folder. Invalid values raise :class:`~warprl.errors.UserError` with a
one-line message. This package neither parses argv nor reads
files: sections.py holds the shared sections and validators, commands.py one dataclass per command.
"""

from warprl.config.commands import (  # noqa: F401
    AlignConfig,
    DataInspectConfig,
    EvalConfig,
    GenerateConfig,
    ParetoConfig,
    QuickstartConfig,
    RewardEvalConfig,
    RewardScoreConfig,
    RewardScorerSettings,
    RewardTrainConfig,
    SFTConfig,
    SFTEvalConfig,
)
from warprl.config.sections import (  # noqa: F401
    RUN_CONTROL_KEYS,
    EvalSettings,
    LoraSettings,
    OptimSettings,
    RLSettings,
    RunSettings,
    SamplingSettings,
    WarpSettings,
    derive,
    field_types,
    parse_prompt_tokens,
    setting,
    to_dict,
    to_yaml,
)
