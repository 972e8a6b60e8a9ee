# Shared part of the scripts/reconstruct_*.sh experiment scripts (sourced, not run). Run those from the
# repository root: paths are relative to it and `benchmarks` must be importable.
#
# Every toggle of the original can be set by editing the script or by an environment variable:
#   RENDER_VISUALIZATION (false), RUN_BENCHMARK (true), BENCHMARKING_METHOD (nerfacto|splatfacto),
#   BENCHMARKING_DENSE_PCINIT (per script), BENCHMARKING_ENVIRONMENT (nerfstudio, a conda env),
#   DATASETS_FOLDER, OUT_DIR, BENCHMARK_OUT_DIR, SPLIT_FOLDER (split_files), SCENES (a subset, space separated).
# Additions of this project:
#   PYTHON (.venv/bin/python when present, else python3), ACE0_DEVICE (auto|cpu|cuda: on a GPU the original's
#   --try_seeds / --seed_parallel_workers are passed, on the CPU the scripts' CPU profile applies),
#   RUN_POSE_EVAL (true: eval_poses.py against the dataset's own poses where it has them),
#   ACE0_EXTRA_ARGS, MAPPING_EXTRA_ARGS, REGISTER_EXTRA_ARGS (appended to ace_zero.py / train_ace.py /
#   register_mapping.py, e.g. short iteration counts), DRY_RUN=1 (print the commands, run nothing).

# --help: the calling script's header, then the settings above
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^source/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
  sed -n '3,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
reconstruction_exe="${RECONSTRUCTION_EXE:-ace_zero.py}"
mapping_exe="${MAPPING_EXE:-train_ace.py}"
register_exe="${REGISTER_EXE:-register_mapping.py}"
export_pc_exe="${EXPORT_PC_EXE:-export_point_cloud.py}"

render_visualization="${RENDER_VISUALIZATION:-false}"
run_benchmark="${RUN_BENCHMARK:-true}"
run_pose_eval="${RUN_POSE_EVAL:-true}"
benchmarking_environment="${BENCHMARKING_ENVIRONMENT:-nerfstudio}"
benchmarking_method="${BENCHMARKING_METHOD:-nerfacto}"
benchmarking_split_folder="${SPLIT_FOLDER:-split_files}"

# run CMD...: execute (or print with DRY_RUN=1)
run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then echo "+ $(printf '%q ' "$@")"; else "$@"; fi
}

# run_logged LOG CMD...: execute with the output shown and copied into LOG (as the original's tee)
run_logged() {
  local log="$1"; shift
  if [ "${DRY_RUN:-0}" = "1" ]; then echo "+ $(printf '%q ' "$@")| tee $log"; return 0; fi
  "$@" 2>&1 | tee "$log"
}

# Scenes to process: SCENES from the environment, if set, else the script's list.
select_scenes() {
  if [ -n "${SCENES:-}" ]; then scenes=(${SCENES}); fi
}

resolve_device() {
  local device="${ACE0_DEVICE:-auto}"
  if [ "$device" = "auto" ]; then
    device=$("$PYTHON" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)
  fi
  ace0_device="$device"
}

# gpu_flags FLAGS...: the original's flags on a GPU; nothing on the CPU, where ace_zero.py's CPU profile applies.
gpu_flags() {
  if [ "$ace0_device" != "cpu" ]; then echo "$@"; fi
}

# <vis> with an optional marker size: vis_flags [MARKER_SIZE]
vis_flags() {
  if [ "$render_visualization" = true ]; then
    if [ -n "${1:-}" ]; then echo "--render_visualization True --render_marker_size $1"
    else echo "--render_visualization True"; fi
  else
    echo "--render_visualization False"
  fi
}

# <pc>: a point cloud for Splatfacto's initialisation only when benchmarking with it.
pc_flags() {
  if [ "$run_benchmark" = true ] && [ "$benchmarking_method" = splatfacto ]; then
    echo "--export_point_cloud True --dense_point_cloud $benchmarking_dense_pcinit"
  else
    echo "--export_point_cloud False --dense_point_cloud False"
  fi
}

# How benchmarks.benchmark_poses is run: in the conda env when there is one, else with Nerfstudio on PATH, else
# only as a converter (the pose evaluation still gives a results table).
benchmark_runner() {
  if command -v conda >/dev/null 2>&1 && conda env list 2>/dev/null | awk '{print $1}' | grep -qx "$benchmarking_environment"; then
    benchmark_cmd=(conda run --no-capture-output -n "$benchmarking_environment" python -m benchmarks.benchmark_poses)
    benchmark_extra=()
  elif command -v ns-train >/dev/null 2>&1; then
    benchmark_cmd=("$PYTHON" -m benchmarks.benchmark_poses)
    benchmark_extra=()
  else
    benchmark_cmd=("$PYTHON" -m benchmarks.benchmark_poses)
    benchmark_extra=(--no_run_nerfstudio)
    echo "Nerfstudio not found (no conda env '$benchmarking_environment', no ns-train on PATH): the benchmark only" \
         "writes the Nerfstudio data; see benchmarks/README.md."
  fi
}

# benchmark_scene SCENE POSE_FILE IMAGE_GLOB [SPLIT_JSON]
benchmark_scene() {
  local scene="$1" pose_file="$2" glob="$3" split="${4:-}"
  [ "$run_benchmark" = true ] || return 0
  local target="$benchmarking_out_dir/$scene"
  run mkdir -p "$target"
  # a second run into the same folder would stop in the converter or in ns-train: start it afresh
  [ -d "$target/nerf_data" ] && run rm -rf "$target/nerf_data"
  local split_args=()
  [ -n "$split" ] && split_args=(--split_json "$split")
  run_logged "$benchmarking_out_dir/log_${scene}.txt" "${benchmark_cmd[@]}" --pose_file "$pose_file" \
    --output_dir "$target" --images_glob_pattern "$glob" "${split_args[@]}" --method "$benchmarking_method" \
    "${benchmark_extra[@]}"
}

# pose_eval_scene SCENE POSE_FILE GT_GLOB: pose accuracy against the dataset's poses -> pose_accuracy.json
pose_eval_scene() {
  local scene="$1" pose_file="$2" gt_glob="$3"
  [ "$run_pose_eval" = true ] || return 0
  run mkdir -p "$benchmarking_out_dir/$scene"
  run_logged "$benchmarking_out_dir/log_${scene}_poses.txt" "$PYTHON" eval_poses.py "$pose_file" "$gt_glob" \
    --json "$benchmarking_out_dir/$scene/pose_accuracy.json"
}

# The results table of all scenes of this experiment.
show_results() {
  if [ "$run_benchmark" = true ] || [ "$run_pose_eval" = true ]; then
    [ -d "$benchmarking_out_dir" ] || [ "${DRY_RUN:-0}" = "1" ] || return 0
    run "$PYTHON" scripts/show_benchmark_results.py "$benchmarking_out_dir" --method "$benchmarking_method"
  fi
}

# The mp4 of a folder of rendered frames (ffmpeg from PATH, else the one of imageio-ffmpeg).
make_video() {
  local frames="$1" video="$2" ffmpeg
  ffmpeg=$(command -v ffmpeg || "$PYTHON" -c "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())")
  run "$ffmpeg" -y -framerate 30 -pattern_type glob -i "$frames/*.png" -c:v libx264 -pix_fmt yuv420p "$video"
}

resolve_device

# Split files the benchmark needs, made from the same dataset root when missing (the original expects the
# user to run scripts/create_splits_*.py first).
ensure_7scenes_splits() {
  if [ "$run_benchmark" = true ] && [ ! -f "$benchmarking_split_folder/7scenes_${scene}.json" ]; then
    run "$PYTHON" scripts/create_splits_7scenes.py "$datasets_folder" "$benchmarking_split_folder"
  fi
}

ensure_mip360_splits() {
  if [ "$run_benchmark" = true ] && [ ! -f "$benchmarking_split_folder/mip360_${scene}.json" ]; then
    run "$PYTHON" scripts/create_splits_mip360.py "$datasets_folder" "$benchmarking_split_folder"
  fi
}
