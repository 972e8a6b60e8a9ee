#!/usr/bin/env bash
# ACE0 on the Tanks and Temples advanced image sets (paper Table 3 left).
# Run from the repository root: bash scripts/reconstruct_t2_advanced.sh
# Toggles and roots: see scripts/reconstruct_common.sh and scripts/reconstruct_t2_common.sh.
source "$(dirname "$0")/reconstruct_common.sh"
source "$(dirname "$0")/reconstruct_t2_common.sh"

group=advanced
scenes=("Auditorium" "Ballroom" "Courtroom" "Palace" "Temple")  # Museum left out, as in the original
t2_image_sets
