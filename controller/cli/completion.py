"""Shell completion for `failoverctl` (click's, for bash, zsh and fish).

Owns one correction to click's fish script: it splits each completion line on every
comma, so a command's description is cut at its first comma ("failover  Preview"); the
script here splits once (`string split -m 1`), keeping the type before the first comma
and the whole "value<TAB>description" after it. Importing this module registers it.
"""

from __future__ import annotations

from click.shell_completion import FishComplete, add_completion_class


class WholeHelpFishComplete(FishComplete):
    source_template = FishComplete.source_template.replace(
        'string split "," $completion', 'string split -m 1 "," $completion')


add_completion_class(WholeHelpFishComplete)
