//! A `wasm32-wasip1` command with an expensive set-up (a table of the primes below two
//! million) that it exports as `wizer-initialize`: Strata runs it once at deploy and
//! snapshots the result, so no request pays it. The answer says whether the table was there
//! when the request started, how many primes it holds, and the body's number-th prime.

use std::io::{Read, Write};
use std::sync::OnceLock;

static PRIMES: OnceLock<Vec<u32>> = OnceLock::new();

fn sieve(below: usize) -> Vec<u32> {
    let mut composite = vec![false; below];
    let mut primes = Vec::new();
    for n in 2..below {
        if !composite[n] {
            primes.push(n as u32);
            // n² fits a 32-bit usize only for small n; larger n have no multiples left to mark.
            let mut m = n.checked_mul(n).unwrap_or(below);
            while m < below {
                composite[m] = true;
                m += n;
            }
        }
    }
    primes
}

/// The set-up, run at deploy when the platform pre-initialises the module.
#[unsafe(export_name = "wizer-initialize")]
pub extern "C" fn init() {
    PRIMES.get_or_init(|| sieve(2_000_000));
}

fn main() {
    let ready = PRIMES.get().is_some();
    let primes = PRIMES.get_or_init(|| sieve(2_000_000));
    let mut body = String::new();
    std::io::stdin().read_to_string(&mut body).expect("read stdin");
    let n: usize = body.trim().parse().unwrap_or(1).max(1);
    let nth = primes.get(n - 1).copied().unwrap_or(0);
    let mut out = std::io::stdout();
    write!(out, "{{\"preinitialized\":{ready},\"primes\":{},\"nth\":{nth}}}", primes.len()).expect("write stdout");
}
