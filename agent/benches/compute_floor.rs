//! The full image backup's compute floor: what the backup pipeline's hash workers do to
//! every chunk (zero check, BLAKE3 digest, zstd with the repository's parameters and the
//! incompressibility probe, the stored bytes' checksum), over exactly the chunks an image
//! backup reads, from memory, with no I/O, no catalog and no chunk files — on one thread,
//! and on as many threads as the machine has cores.
//!
//! No backup can finish faster than the parallel figure on this machine, so
//! `scripts/bench-repo` puts it next to the measured full backup: it is what the
//! "≥ 5× restic" and "≥ 2.5× borg" targets are checked against when they are not met.
//!
//! `cargo bench -p vadp-agent --bench compute_floor` generates the benchmark image
//! (`VADP_BENCH_SIZE_MIB`, default 2048, seed 1); `VADP_BENCH_IMAGE=FILE` uses an existing
//! one instead. Prints one human line on stderr and one JSON object on stdout.

use std::sync::Mutex;
use std::time::Instant;

use vadp_agent::ids::ChunkDigest;
use vadp_agent::repo::chunk::{self, ChunkEncoder, Encoded, HEADER_LEN};
use vadp_agent::repo::{
    DEFAULT_CHUNK_SIZE_BYTES, DiskSource, IndexGeometry, RawFileSource, pipeline, synthetic_image,
};
use vadp_tests::bench;

const MIB: u64 = 1 << 20;
const ROUNDS: usize = 3;

/// What one pass over the chunks did.
#[derive(Debug, Default, Clone, Copy)]
struct Pass {
    /// Seconds of BLAKE3 (digest), summed over threads.
    hash_s: f64,
    /// Seconds of encoding (probe, zstd, checksum), summed over threads.
    encode_s: f64,
    /// Bytes handed to zstd (chunks not found incompressible by the probe or zero).
    compressed_input: u64,
    /// Bytes stored (headers included).
    stored: u64,
}

impl Pass {
    fn add(&mut self, o: Pass) {
        self.hash_s += o.hash_s;
        self.encode_s += o.encode_s;
        self.compressed_input += o.compressed_input;
        self.stored += o.stored;
    }
}

/// Every chunk of `image` that a full image backup reads (those touching an allocated
/// extent), as frames with header room, the way the pipeline's reader fills them.
fn load_chunks(image: &std::path::Path) -> Vec<Vec<u8>> {
    let mut source = RawFileSource::open(image).expect("open image");
    let index = IndexGeometry::new(DEFAULT_CHUNK_SIZE_BYTES, source.capacity_bytes());
    let extents = source.allocated_extents().expect("allocated extents");
    pipeline::slots_for_extents(&extents, index)
        .expect("extents within the image")
        .iter()
        .map(|slot| {
            let len = usize::try_from(index.slot_len(slot)).expect("chunk fits in memory");
            let mut frame = vec![0u8; HEADER_LEN + len];
            source
                .read_at(index.slot_offset(slot), &mut frame[HEADER_LEN..])
                .expect("read image");
            frame
        })
        .collect()
}

/// Run the hash workers' per-chunk work over `frames` on `threads` threads; wall seconds
/// and the summed per-phase figures.
fn run(frames: &mut [Vec<u8>], threads: usize) -> (f64, Pass) {
    let queue = Mutex::new(frames.iter_mut());
    let start = Instant::now();
    let passes: Vec<Pass> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let queue = &queue;
                scope.spawn(move || {
                    let mut encoder = ChunkEncoder::new().expect("zstd context");
                    let cs = usize::try_from(DEFAULT_CHUNK_SIZE_BYTES).expect("fits");
                    let mut out = vec![0u8; chunk::max_encoded_len(cs)];
                    let mut pass = Pass::default();
                    loop {
                        let Some(frame) = queue.lock().expect("queue lock").next() else {
                            break;
                        };
                        let data = &frame[HEADER_LEN..];
                        if chunk::is_zero(data) {
                            continue;
                        }
                        let t = Instant::now();
                        let digest = ChunkDigest::of(data);
                        pass.hash_s += t.elapsed().as_secs_f64();
                        let len = data.len();
                        let t = Instant::now();
                        let encoded = encoder
                            .encode_frame(frame.as_mut_slice(), &digest, &mut out)
                            .expect("encode");
                        pass.encode_s += t.elapsed().as_secs_f64();
                        pass.stored += match encoded {
                            Encoded::InFrame => (HEADER_LEN + len) as u64,
                            Encoded::InOut(n) => {
                                pass.compressed_input += len as u64;
                                n as u64
                            }
                        };
                    }
                    pass
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("worker"))
            .collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let mut total = Pass::default();
    for p in passes {
        total.add(p);
    }
    (wall, total)
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let work = vadp_tests::target_dir().join("bench-compute-floor");
    let image = match std::env::var_os("VADP_BENCH_IMAGE") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            std::fs::create_dir_all(&work).expect("create bench dir");
            let img = work.join("disk.img");
            synthetic_image::generate(&img, bench::size_mib() * MIB, 1).expect("generate image");
            img
        }
    };
    let mut frames = load_chunks(&image);
    let read: u64 = frames.iter().map(|f| (f.len() - HEADER_LEN) as u64).sum();

    let mut one = Vec::new();
    let mut all = Vec::new();
    let mut pass = Pass::default();
    for _ in 0..ROUNDS {
        let (wall, p) = run(&mut frames, 1);
        one.push(wall);
        pass = p;
        all.push(run(&mut frames, cores).0);
    }
    let (one, all) = (bench::median(&mut one), bench::median(&mut all));
    eprintln!(
        "compute floor over {} chunks ({:.0} MB read, {:.0} MB given to zstd, {:.0} MB stored): \
         {one:.2} s on 1 thread (BLAKE3 {:.2} s, encode {:.2} s), {all:.2} s on {cores} threads \
         (medians of {ROUNDS})",
        frames.len(),
        read as f64 / 1e6,
        pass.compressed_input as f64 / 1e6,
        pass.stored as f64 / 1e6,
        pass.hash_s,
        pass.encode_s,
    );
    println!(
        "{{\"chunks\":{},\"read_bytes\":{read},\"zstd_input_bytes\":{},\"stored_bytes\":{},\
         \"one_thread_s\":{one:.3},\"hash_s\":{:.3},\"encode_s\":{:.3},\"threads\":{cores},\
         \"all_threads_s\":{all:.3}}}",
        frames.len(),
        pass.compressed_input,
        pass.stored,
        pass.hash_s,
        pass.encode_s,
    );
    if std::env::var_os("VADP_BENCH_IMAGE").is_none() {
        let _ = std::fs::remove_dir_all(&work);
    }
}
