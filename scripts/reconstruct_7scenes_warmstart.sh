#!/usr/bin/env bash
# "KF+ACE0" on 7-Scenes (paper Table 1 left): map each scene with the KinectFusion poses of the dataset
# (train_ace.py refining poses and focal length), register all frames against that head with the refined
# focal length, and benchmark the result. Run from the repository root:
#   bash scripts/reconstruct_7scenes_warmstart.sh
# Toggles and roots: see scripts/reconstruct_common.sh (environment variables or edit below).
source "$(dirname "$0")/reconstruct_common.sh"

datasets_folder="${DATASETS_FOLDER:-datasets/7scenes}"
out_dir="${OUT_DIR:-reconstructions/7scenes_warmstart}"
benchmarking_out_dir="${BENCHMARK_OUT_DIR:-benchmark/7scenes_warmstart}"
benchmarking_dense_pcinit="${BENCHMARKING_DENSE_PCINIT:-true}"
scenes=("chess" "fire" "heads" "office" "pumpkin" "redkitchen" "stairs")
select_scenes
[ "$run_benchmark" = true ] && benchmark_runner

for scene in "${scenes[@]}"; do
  echo "Processing scene: $scene"
  input_rgb_files="$datasets_folder/$scene/seq-*/*.color.png"
  scene_out="$out_dir/$scene"
  if [ "$render_visualization" = true ]; then
    vis="--render_visualization True --render_target_path $scene_out/renderings --render_marker_size 0.02"
  else
    vis="--render_visualization False"
  fi
  run mkdir -p "$scene_out"
  run "$PYTHON" "$mapping_exe" "$input_rgb_files" "$scene_out/iteration0.pt" \
    --pose_files "$datasets_folder/$scene/seq-*/*.pose.txt" $vis --use_external_focal_length 525 \
    --refine_calibration True --pose_refinement mlp --pose_refinement_wait 5000 ${MAPPING_EXTRA_ARGS:-}
  # the focal length refined while mapping: field 9 of the preliminary pose file
  focal="<focal of $scene_out/poses_iteration0_preliminary.txt>"
  [ -f "$scene_out/poses_iteration0_preliminary.txt" ] && \
    focal=$(head -n 1 "$scene_out/poses_iteration0_preliminary.txt" | awk '{print $9}')
  echo "Using focal length from mapping stage: $focal"
  run "$PYTHON" "$register_exe" "$input_rgb_files" "$scene_out/iteration0.pt" $vis \
    --use_external_focal_length "$focal" --session iteration0 ${REGISTER_EXTRA_ARGS:-}
  run cp "$scene_out/poses_iteration0.txt" "$scene_out/poses_final.txt"
  if [ "$render_visualization" = true ]; then
    run "$PYTHON" render_final_sweep.py "$scene_out/renderings" --render_marker_size 0.02
    make_video "$scene_out/renderings" "$scene_out/refinement.mp4"
  fi
  if [ "$run_benchmark" = true ] && [ "$benchmarking_method" = splatfacto ]; then
    if [ "$render_visualization" = true ] && [ "$benchmarking_dense_pcinit" = false ]; then
      run "$PYTHON" "$export_pc_exe" "$scene_out/pc_final.ply" \
        --visualization_buffer "$scene_out/renderings/iteration0_mapping.pkl" --convention opencv
    else
      run "$PYTHON" "$export_pc_exe" "$scene_out/pc_final.ply" --network "$scene_out/iteration0.pt" \
        --pose_file "$scene_out/poses_final.txt" --convention opencv --dense_point_cloud "$benchmarking_dense_pcinit"
    fi
  fi
  ensure_7scenes_splits
  benchmark_scene "$scene" "$scene_out/poses_final.txt" "$input_rgb_files" \
    "$benchmarking_split_folder/7scenes_${scene}.json"
  pose_eval_scene "$scene" "$scene_out/poses_final.txt" "$datasets_folder/$scene/seq-*/*.pose.txt"
done
show_results
