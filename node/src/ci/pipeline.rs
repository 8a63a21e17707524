//! The pipeline file `.pbft-ci.yml`. Being written.
