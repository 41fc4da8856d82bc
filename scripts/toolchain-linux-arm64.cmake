# Cross-compiling the CPU-only addon for arm64 Linux with Debian's toolchain
# (apt-get install g++-aarch64-linux-gnu): IDFORGE_TARGET=linux-arm64 node scripts/build-native.mjs,
# or scripts/platform-package.mjs --target linux-arm64. The N-API headers are the same on every
# architecture (node-api-headers), and the addon links against nothing of Node's.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
