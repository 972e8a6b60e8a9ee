#!/usr/bin/env bash
# "Sparse COLMAP + ACE0" on the Tanks and Temples intermediate videos (needs datasets/setup_t2.py --with-colmap).
# Run from the repository root: bash scripts/reconstruct_t2_intermediate_videos_warmstart.sh
# Toggles and roots: see scripts/reconstruct_common.sh and scripts/reconstruct_t2_common.sh.
source "$(dirname "$0")/reconstruct_common.sh"
source "$(dirname "$0")/reconstruct_t2_common.sh"

group=intermediate
scenes=("Family" "Francis" "Horse" "Lighthouse" "Playground" "Train")
t2_videos_warmstart
