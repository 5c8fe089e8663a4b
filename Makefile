# Two entry points do all set-up on a fresh machine (see README):
#   make demo   fetch the real pretrained models, run the camera loop over the bundled photos
#   make test   fetch what the tests need and run every check and test
#
# Builds go to a target dir outside the clone so CI and later clones reuse it.
export CARGO_TARGET_DIR ?= /var/tmp/resnet-edge-target
# Python is only for fetching/converting the real models (numpy + onnx), never for tests.
VENV ?= /var/tmp/resnet-edge-venv
PY := $(VENV)/bin/python

.PHONY: demo test models check unit

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check numpy onnx

models: $(PY)
	PYTHON=$(PY) bash models/fetch_models.sh models/real


# The camera loop over the bundled photos writes annotated frames and JSONL logs here.
DEMO_OUT ?= demo-out

demo: models
	rm -rf $(DEMO_OUT)
	cargo run --quiet -- camera models/real/efficientnet_lite0.onnx --source dir:models/photos \
	  --display png:$(DEMO_OUT)/efficientnet_lite0 --log $(DEMO_OUT)/efficientnet_lite0.jsonl
	cargo run --quiet -- camera models/real/opennsfw.onnx --source dir:models/photos \
	  --display png:$(DEMO_OUT)/opennsfw --log $(DEMO_OUT)/opennsfw.jsonl

check:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

test: models check
	cargo test --no-fail-fast
	# The speed rewrites are on above; the library's PyTorch checks once more with all of them off.
	RESNET_EDGE_NO_REWRITE=all cargo test --no-fail-fast --test library_classify
	bash targets/cross-test.sh --install -- --lib --test library_classify --test library_quantized

# ---- Device binaries (ARM cross builds; see targets/*.toml, .cargo/config.toml) ----
#   make device TARGET=pi5                 release binary for a profile in targets/
#   make device TARGET=pi4 CPU_SPECIFIC=1  add the profile's -C target-cpu flags (own target dir)
#   make device TARGET=armv7 ZIG=1         gnu triples via cargo-zigbuild: glibc 2.17 floor
#   make cross-setup                       install cross toolchains, qemu-user, rustup targets
#   make cross-test                        ARM unit, classification and quantisation tests under qemu
TARGET ?= pi4
DEVICE_TOML = targets/$(TARGET).toml
DEVICE_TRIPLE = $(shell sed -n 's/^triple *= *"\(.*\)"/\1/p' $(DEVICE_TOML) 2>/dev/null)
DEVICE_CPU_FLAGS = $(shell sed -n 's/^rustflags *= *"\(.*\)"/\1/p' $(DEVICE_TOML) 2>/dev/null)
CPU_SPECIFIC ?= 0
ZIG ?= 0
ZIG_GLIBC ?= 2.17
ZIG_VENV ?= /var/tmp/resnet-edge-zig
# CPU-specific and zig builds get their own target dirs: different flags or C compiler would
# otherwise rebuild tract over the generic build every time.
DEVICE_TARGET_DIR = $(CARGO_TARGET_DIR)$(if $(filter 1,$(CPU_SPECIFIC)),/cpu-$(TARGET))$(if $(filter 1,$(ZIG)),/zig)
DEVICE_BIN = $(DEVICE_TARGET_DIR)/$(DEVICE_TRIPLE)/release/resnet-edge

.PHONY: device cross-setup cross-test

device:
	@test -f $(DEVICE_TOML) || { echo "no profile $(DEVICE_TOML); one of: $$(ls targets/*.toml | xargs -n1 basename | sed 's/.toml//' | tr '\n' ' ')"; exit 2; }
	@echo "profile $(TARGET): $(DEVICE_TRIPLE)$(if $(filter 1,$(CPU_SPECIFIC)), with $(DEVICE_CPU_FLAGS))"
ifeq ($(ZIG),1)
	test -x $(ZIG_VENV)/bin/cargo-zigbuild || { python3 -m venv $(ZIG_VENV) && $(ZIG_VENV)/bin/pip install --quiet --disable-pip-version-check ziglang cargo-zigbuild; }
	PATH=$(ZIG_VENV)/bin:$$PATH CARGO_TARGET_DIR=$(DEVICE_TARGET_DIR) \
	  $(if $(filter 1,$(CPU_SPECIFIC)),RUSTFLAGS="$(DEVICE_CPU_FLAGS)") \
	  nice -n 10 cargo zigbuild --release --target $(DEVICE_TRIPLE)$(if $(findstring gnu,$(DEVICE_TRIPLE)),.$(ZIG_GLIBC)) --bin resnet-edge
else
	CARGO_TARGET_DIR=$(DEVICE_TARGET_DIR) \
	  $(if $(filter 1,$(CPU_SPECIFIC)),RUSTFLAGS="$(DEVICE_CPU_FLAGS) $(if $(findstring musl,$(DEVICE_TRIPLE)),-C target-feature=+crt-static)") \
	  nice -n 10 cargo build --release --target $(DEVICE_TRIPLE) --bin resnet-edge
endif
	@echo "$(DEVICE_BIN)"
	@file -L "$(DEVICE_BIN)"
	@ls -l "$(DEVICE_BIN)" | awk '{print $$5 " bytes"}'

cross-setup:
	bash targets/cross-test.sh --setup --triples "aarch64-unknown-linux-musl aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf"

cross-test:
	bash targets/cross-test.sh --install -- --lib --test library_classify --test library_quantized
