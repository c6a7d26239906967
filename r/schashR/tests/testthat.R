library(testthat)
library(schashR)

test_check("schashR")
