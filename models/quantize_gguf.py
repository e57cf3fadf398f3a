#!/usr/bin/env python3
"""Requantize a GGUF with llama.cpp (llama-cpp-python's bindings): models/fetch kquants.

Usage: quantize_gguf.py SRC DST KIND, KIND one of Q4_K_M, Q5_K_M, Q6_K. The source's
blocks are dequantized and quantized again (allow_requantize); tensors whose rows are not
a multiple of 256 get llama.cpp's fallback types (Q5_0, Q5_1 or Q8_0).
"""

import ctypes
import sys

import llama_cpp

KINDS = {
    "Q4_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "Q5_K_M": llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "Q6_K": llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K,
}


def main():
    src, dst, kind = sys.argv[1:4]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = KINDS[kind]
    params.allow_requantize = True
    params.nthread = 2
    sys.exit(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


if __name__ == "__main__":
    main()
