//! The pipeline benchmark (`server/benches/pipeline.rs`) as an example, so it can run with the
//! dev profile (dependencies and kadr at opt-level 3) without a second, release build of FAISS:
//! `BENCH_DATA=data/tuxpaint8 cargo run -p kadr --example bench_pipeline`.
include!("../benches/pipeline.rs");
