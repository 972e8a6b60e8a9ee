#!/usr/bin/env bash
# ACE0 on 7-Scenes (paper Table 1 left, "ACE0"): reconstruct every scene from its RGB frames with the focal
# length initialised to 525 px (still refined), then benchmark the poses. Run from the repository root:
#   bash scripts/reconstruct_7scenes.sh
# Toggles and roots: see scripts/reconstruct_common.sh (environment variables or edit below).
source "$(dirname "$0")/reconstruct_common.sh"

datasets_folder="${DATASETS_FOLDER:-datasets/7scenes}"
out_dir="${OUT_DIR:-reconstructions/7scenes}"
benchmarking_out_dir="${BENCHMARK_OUT_DIR:-benchmark/7scenes}"
benchmarking_dense_pcinit="${BENCHMARKING_DENSE_PCINIT:-true}"
scenes=("chess" "fire" "heads" "office" "pumpkin" "redkitchen" "stairs")
select_scenes
[ "$run_benchmark" = true ] && benchmark_runner

for scene in "${scenes[@]}"; do
  echo "Processing scene: $scene"
  input_rgb_files="$datasets_folder/$scene/seq-*/*.color.png"
  run mkdir -p "$out_dir/$scene"
  run_logged "$out_dir/$scene/log_${scene}.txt" "$PYTHON" "$reconstruction_exe" "$input_rgb_files" "$out_dir/$scene" \
    $(gpu_flags --try_seeds 5) $(vis_flags 0.02) --use_external_focal_length 525 $(pc_flags) ${ACE0_EXTRA_ARGS:-}
  ensure_7scenes_splits
  benchmark_scene "$scene" "$out_dir/$scene/poses_final.txt" "$input_rgb_files" \
    "$benchmarking_split_folder/7scenes_${scene}.json"
  pose_eval_scene "$scene" "$out_dir/$scene/poses_final.txt" "$datasets_folder/$scene/seq-*/*.pose.txt"
done
show_results
