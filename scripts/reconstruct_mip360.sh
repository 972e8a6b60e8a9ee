#!/usr/bin/env bash
# ACE0 on Mip-NeRF 360 (paper Table 2 (b)): reconstruct every scene from images_4 with the heuristic focal
# length, then benchmark with the split of scripts/create_splits_mip360.py. Run from the repository root:
#   bash scripts/reconstruct_mip360.sh
# Toggles and roots: see scripts/reconstruct_common.sh (environment variables or edit below).
source "$(dirname "$0")/reconstruct_common.sh"

datasets_folder="${DATASETS_FOLDER:-datasets/mip360}"
out_dir="${OUT_DIR:-reconstructions/mip360}"
benchmarking_out_dir="${BENCHMARK_OUT_DIR:-benchmark/mip360}"
benchmarking_dense_pcinit="${BENCHMARKING_DENSE_PCINIT:-false}"
scenes=("bicycle" "bonsai" "counter" "garden" "kitchen" "room" "stump")
select_scenes
[ "$run_benchmark" = true ] && benchmark_runner

for scene in "${scenes[@]}"; do
  echo "Processing scene: $scene"
  input_rgb_files="$datasets_folder/$scene/images_4/*.JPG"
  run mkdir -p "$out_dir/$scene"
  run_logged "$out_dir/$scene/log_${scene}.txt" "$PYTHON" "$reconstruction_exe" "$input_rgb_files" "$out_dir/$scene" \
    $(gpu_flags --try_seeds 5) --render_visualization "$render_visualization" $(gpu_flags --seed_parallel_workers 5) \
    $(pc_flags) ${ACE0_EXTRA_ARGS:-}
  ensure_mip360_splits
  benchmark_scene "$scene" "$out_dir/$scene/poses_final.txt" "$input_rgb_files" \
    "$benchmarking_split_folder/mip360_${scene}.json"
  if [ "$run_pose_eval" = true ]; then  # against the dataset's COLMAP poses
    run "$PYTHON" scripts/colmap_gt_poses.py "$datasets_folder/$scene/sparse/0" \
      "$benchmarking_out_dir/$scene/colmap_poses" --images_glob "$input_rgb_files"
    pose_eval_scene "$scene" "$out_dir/$scene/poses_final.txt" "$benchmarking_out_dir/$scene/colmap_poses/*.pose.txt"
  fi
done
show_results
