# Shared part of the scripts/reconstruct_t2_*.sh scripts (sourced after reconstruct_common.sh). The caller sets
# `group` (training, intermediate or advanced) and `scenes`, then calls one of the t2_* functions.

# Image sets (paper Table 3 left, "ACE0"): datasets/t2/<group>/<Scene>/*.jpg, heuristic focal length.
t2_image_sets() {
  datasets_folder="${DATASETS_FOLDER:-datasets/t2/$group}"
  out_dir="${OUT_DIR:-reconstructions/t2_$group}"
  benchmarking_out_dir="${BENCHMARK_OUT_DIR:-benchmark/t2_$group}"
  benchmarking_dense_pcinit="${BENCHMARKING_DENSE_PCINIT:-false}"
  local colmap_folder="${COLMAP_DATASETS_FOLDER:-datasets/t2_colmap/$group}"
  select_scenes
  [ "$run_benchmark" = true ] && benchmark_runner
  for scene in "${scenes[@]}"; do
    echo "Processing scene: $scene"
    input_rgb_files="$datasets_folder/$scene/*.jpg"
    run mkdir -p "$out_dir/$scene"
    run_logged "$out_dir/$scene/log_${scene}.txt" "$PYTHON" "$reconstruction_exe" "$input_rgb_files" "$out_dir/$scene" \
      $(gpu_flags --try_seeds 5) $(vis_flags 0.05) $(gpu_flags --seed_parallel_workers 5) $(pc_flags) ${ACE0_EXTRA_ARGS:-}
    benchmark_scene "$scene" "$out_dir/$scene/poses_final.txt" "$input_rgb_files"
    # the only reference poses of T&T here are the COLMAP ones of setup_t2.py --with-colmap
    if [ -d "$colmap_folder/$scene" ]; then
      pose_eval_scene "$scene" "$out_dir/$scene/poses_final.txt" "$colmap_folder/$scene/*_pose.txt"
    fi
  done
  show_results
}

# Video frames (paper Table 3 right): datasets/t2/<group>_videos/<Scene>/*.jpg, heuristic focal length.
t2_videos() {
  datasets_folder="${DATASETS_FOLDER:-datasets/t2/${group}_videos}"
  out_dir="${OUT_DIR:-reconstructions/t2_${group}_videos}"
  benchmarking_out_dir="${BENCHMARK_OUT_DIR:-benchmark/t2_${group}_videos}"
  benchmarking_dense_pcinit="${BENCHMARKING_DENSE_PCINIT:-true}"
  select_scenes
  [ "$run_benchmark" = true ] && benchmark_runner
  for scene in "${scenes[@]}"; do
    echo "Processing scene: $scene"
    input_rgb_files="$datasets_folder/$scene/*.jpg"
    run mkdir -p "$out_dir/$scene"
    run_logged "$out_dir/$scene/log_${scene}.txt" "$PYTHON" "$reconstruction_exe" "$input_rgb_files" "$out_dir/$scene" \
      $(gpu_flags --try_seeds 5) --render_visualization "$render_visualization" $(gpu_flags --seed_parallel_workers 5) \
      $(pc_flags) ${ACE0_EXTRA_ARGS:-}
    benchmark_scene "$scene" "$out_dir/$scene/poses_final.txt" "$input_rgb_files"
  done
  show_results
}

# "Sparse COLMAP + ACE0" (paper Table 3 left): a head mapped on the COLMAP-posed image set seeds ACE0 on the
# video frames, whose focal length is half the COLMAP one (540p frames, 1080p images).
t2_videos_warmstart() {
  datasets_folder_sparse="${DATASETS_FOLDER_SPARSE:-datasets/t2_colmap/$group}"
  datasets_folder_video="${DATASETS_FOLDER_VIDEO:-datasets/t2/${group}_videos}"
  out_dir="${OUT_DIR:-reconstructions/t2_${group}_videos_warmstart}"
  benchmarking_out_dir="${BENCHMARK_OUT_DIR:-benchmark/t2_${group}_videos_warmstart}"
  benchmarking_dense_pcinit="${BENCHMARKING_DENSE_PCINIT:-true}"
  select_scenes
  [ "$run_benchmark" = true ] && benchmark_runner
  for scene in "${scenes[@]}"; do
    echo "Processing scene: $scene"
    local focal_file="$datasets_folder_sparse/$scene/focal_length.txt" focal video_focal
    focal="<focal of $focal_file>"
    [ -f "$focal_file" ] && focal=$(cat "$focal_file")
    echo "Using focal length from COLMAP stage: $focal"
    run mkdir -p "$out_dir/$scene"
    run_logged "$out_dir/$scene/log_${scene}_init.txt" "$PYTHON" "$mapping_exe" "$datasets_folder_sparse/$scene/*.jpg" \
      "$out_dir/$scene/iteration0_seed0.pt" --pose_files "$datasets_folder_sparse/$scene/*_pose.txt" \
      --render_visualization "$render_visualization" --render_target_path "$out_dir/$scene/renderings" \
      --use_external_focal_length "$focal" ${MAPPING_EXTRA_ARGS:-}
    video_focal="<half of $focal>"
    [ -f "$focal_file" ] && video_focal=$(awk -v f="$focal" 'BEGIN { printf "%.6f", f / 2 }')
    echo "Adjusted focal length for video frames: $video_focal"
    input_rgb_files="$datasets_folder_video/$scene/*.jpg"
    run_logged "$out_dir/$scene/log_${scene}.txt" "$PYTHON" "$reconstruction_exe" "$input_rgb_files" "$out_dir/$scene" \
      --seed_network "$out_dir/$scene/iteration0_seed0.pt" --render_visualization "$render_visualization" \
      --use_external_focal_length "$video_focal" --refine_calibration False $(pc_flags) ${ACE0_EXTRA_ARGS:-}
    benchmark_scene "$scene" "$out_dir/$scene/poses_final.txt" "$input_rgb_files"
  done
  show_results
}
