// Stand-in for the CUDA header of this name: the CPU emulator's runtime (emu_runtime.h).
#pragma once
#include "emu_runtime.h"
