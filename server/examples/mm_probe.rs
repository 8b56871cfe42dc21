use candle_core::{Device, Tensor};
use std::time::Instant;
#[link(name = "openblas")]
extern "C" {
    fn cblas_sgemm(
        order: i32,
        ta: i32,
        tb: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn openblas_get_num_threads() -> i32;
}
fn main() {
    println!("openblas threads {}", unsafe { openblas_get_num_threads() });
    for (m, k, n) in [
        (3136 * 8, 96, 384),
        (3136 * 8, 384, 96),
        (196 * 8, 384, 1536),
        (196 * 8, 1536, 384),
        (3136, 96, 384),
    ] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        let f = || a.matmul(&w.t().unwrap()).unwrap();
        f();
        let (mut i, t) = (0, Instant::now());
        while t.elapsed().as_secs_f64() < 1.0 {
            std::hint::black_box(f());
            i += 1;
        }
        let dt = t.elapsed().as_secs_f64() / i as f64;
        let av = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wv = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut c = vec![0f32; m * n];
        let g = |c: &mut Vec<f32>| unsafe {
            cblas_sgemm(
                101,
                111,
                112,
                m as i32,
                n as i32,
                k as i32,
                1.0,
                av.as_ptr(),
                k as i32,
                wv.as_ptr(),
                k as i32,
                0.0,
                c.as_mut_ptr(),
                n as i32,
            )
        };
        g(&mut c);
        let (mut j, t2) = (0, Instant::now());
        while t2.elapsed().as_secs_f64() < 1.0 {
            g(&mut c);
            j += 1;
        }
        let dt2 = t2.elapsed().as_secs_f64() / j as f64;
        let fl = 2.0 * (m * k * n) as f64;
        println!(
            "{m}x{k}x{n}: candle/gemm {:.1} GFLOP/s, openblas {:.1} GFLOP/s",
            fl / dt / 1e9,
            fl / dt2 / 1e9
        );
    }
}
