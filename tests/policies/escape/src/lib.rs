//! Tries what a module must not get, chosen by its settings `{"try": "..."}`: `fs` reads a file,
//! `env` an environment variable, `clock` the time of day, `net` opens a connection, `recurse`
//! exhausts its stack, `sleep` sleeps a minute, `print` writes to stdout and stderr, `poll` polls four million
//! copies of one pollable; `agent`
//! decides on who asks (rejects a User-Agent holding "blocked").
//! Admits when what it tried gave it nothing.
wit_bindgen::generate!({ world: "policy", path: "../../../wit" });

struct P;

fn attempt(what: &str, request: &Request) -> Decision {
    match what {
        "fs" => match std::fs::read_to_string("/etc/hostname") {
            Ok(text) => Decision::Reject(format!("read a file: {text}")),
            Err(_) => Decision::Admit,
        },
        "env" => match std::env::var("HOME") {
            Ok(home) => Decision::Reject(format!("read the environment: {home}")),
            Err(_) => Decision::Admit,
        },
        "clock" => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            if now > 0 {
                Decision::Reject(format!("read the clock: {now}"))
            } else {
                Decision::Admit
            }
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(60));
            Decision::Reject("slept".into())
        }
        "print" => {
            println!("to stdout from the module");
            eprintln!("to stderr from the module");
            Decision::Admit
        }
        "poll" => {
            let clock = wasi::clocks::monotonic_clock::subscribe_duration(0);
            let many = vec![&clock; 4 << 20];
            let ready = wasi::io::poll::poll(&many);
            Decision::Reject(format!("polled: {} ready", ready.len()))
        }
        "net" => match std::net::TcpStream::connect("127.0.0.1:22") {
            Ok(_) => Decision::Reject("opened a connection".into()),
            Err(_) => Decision::Admit,
        },
        "recurse" => {
            fn deep(n: u64) -> u64 {
                let pad = std::hint::black_box([n; 64]);
                if n == u64::MAX { 0 } else { deep(n + 1) + pad[1] }
            }
            Decision::Reject(format!("returned from recursion: {}", deep(0)))
        }
        "agent" => match &request.client.user_agent {
            Some(agent) if agent.contains("blocked") => Decision::Reject(format!("{agent} may not pull")),
            _ => Decision::Admit,
        },
        other => Decision::Reject(format!("nothing to try called {other}")),
    }
}

impl Guest for P {
    fn metadata() -> PolicyMetadata {
        PolicyMetadata { name: "escape".into(), version: "0".into(), capabilities: vec![] }
    }
    fn validate_settings(_: String) -> Result<(), String> {
        Ok(())
    }
    fn evaluate(request: Request, settings: String) -> Decision {
        let what = settings.split('"').nth(3).unwrap_or("").to_string();
        attempt(&what, &request)
    }
}
export!(P);
