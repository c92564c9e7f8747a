# Link options for programs linked against the torch *wheel* as LibTorch.
#
# The wheel's libtorch_cuda.so finds NCCL, cuBLAS, cuDNN, ... of the wheel's
# nvidia-* packages (site-packages/nvidia/*/lib) at run time through its
# RUNPATH. The linker, though, looks for a shared library's dependencies in
# the -rpath directories first: a CUDA toolkit's older libnccl.so.2 there
# left ncclComm* symbols undefined and failed every executable's link.
# -rpath-link to the wheel's library folders comes before every other
# search path, so the link sees the libraries the program will run with.
#
# torch_relu_ext_wheel_link_options(<out var> <torch install prefix>) sets
# <out var> to the options (empty for a LibTorch that is not a wheel).
function(torch_relu_ext_wheel_link_options out torch_prefix)
  set(options "")
  get_filename_component(site "${torch_prefix}/.." ABSOLUTE)
  file(GLOB dirs LIST_DIRECTORIES true "${site}/nvidia/*/lib")
  if(dirs)
    list(JOIN dirs ":" path)
    set(options "LINKER:-rpath-link,${path}")
  endif()
  set(${out} "${options}" PARENT_SCOPE)
endfunction()
