# The Python modules, imported on first use (delay_load) so that loading schashR
# never fails when Python or schash is missing; just before the first import,
# reticulate is pointed at the Python that schashR should use.
.schash <- new.env(parent = emptyenv())

.onLoad <- function(libname, pkgname) {
  hooks <- list(before_load = function() use_schash_python())
  .schash$py <- reticulate::import("schash", delay_load = hooks)
  .schash$bridge <- reticulate::import("schash._bridge", delay_load = hooks)
  invisible()
}

schash_py <- function() .schash$py

schash_bridge <- function() .schash$bridge
