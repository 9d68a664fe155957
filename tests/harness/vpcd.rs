//! pcscd + vpcd readers and `tessera-vpiv` cards for tests.
//!
//! Tests run under `scripts/with-pcscd.sh`, which starts a private pcscd with several vpcd readers
//! and exports `TESSERA_VPCD_PORTS`, `TESSERA_VPCD_READERS` and `TESSERA_VPCD_LOCK_DIR`. A test
//! calls [`VirtualCard::start`]: it claims a free reader (an exclusive lock on a file per port, so
//! the separate processes of `cargo nextest` each get their own), starts the built `tessera-vpiv`
//! on that reader's port with a fresh state file, and waits until pcscd reports the card present.
//! Dropping the [`VirtualCard`] kills the card and frees the reader.
//!
//! [`run_tool`] runs an external client (yubico-piv-tool, ykman, pkcs11-tool, openssl) and
//! captures its exit code and output; [`VirtualCard::yubico_piv_tool`], [`VirtualCard::ykman`]
//! and [`VirtualCard::pkcs11_tool`] run the card clients on this card's reader only.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// OpenSC's PKCS#11 module as Debian installs it (package opensc-pkcs11).
pub const OPENSC_PKCS11_MODULE: &str = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so";

/// The message every card test fails with when it is not run inside the harness.
pub const RUN_UNDER_HARNESS: &str = "run the tests under scripts/with-pcscd.sh (see README)";

/// The built `tessera-vpiv`: the binary of the workspace package `tessera-vpiv` in this test's
/// target directory (`target/<profile>/`, the parent of the `deps/` this test binary runs from).
/// Cargo gives `CARGO_BIN_EXE_*` only for the test's own package; `cargo build` and
/// `cargo nextest run` at the root cover both packages and so build it.
pub fn vpiv_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .filter(|deps| deps.ends_with("deps"))
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} does not run from target/<profile>/deps", exe.display()));
    let path = profile_dir.join("tessera-vpiv");
    assert!(
        path.is_file(),
        "{} is not built: run `cargo build -p tessera-vpiv` (or `cargo build` at the root)",
        path.display()
    );
    path
}

/// How long a test waits for a free reader or for pcscd to see a card before it gives up.
/// Only a guard against hanging forever; nothing asserts on it.
const CLAIM_DEADLINE: Duration = Duration::from_secs(600);
const CARD_PRESENT_DEADLINE: Duration = Duration::from_secs(60);
/// See [`VirtualCard::insert`]: how long a started card may stay unseen before it is re-inserted,
/// and how often.
const REINSERT_AFTER: Duration = Duration::from_secs(10);
const INSERT_ATTEMPTS: u32 = 3;
/// A client tool that runs longer than this is killed and the test fails (a hung tool would
/// otherwise hang the whole run).
const TOOL_DEADLINE: Duration = Duration::from_secs(300);

/// One vpcd reader offered by the harness' pcscd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reader {
    pub port: u16,
    pub name: String,
}

/// The readers the harness offers, read from its environment. Panics with [`RUN_UNDER_HARNESS`]
/// when the tests are not run under `scripts/with-pcscd.sh`.
pub fn harness_readers() -> (Vec<Reader>, PathBuf) {
    let (Ok(ports), Ok(names), Ok(lock_dir)) = (
        std::env::var("TESSERA_VPCD_PORTS"),
        std::env::var("TESSERA_VPCD_READERS"),
        std::env::var("TESSERA_VPCD_LOCK_DIR"),
    ) else {
        panic!(
            "{RUN_UNDER_HARNESS}: TESSERA_VPCD_PORTS, TESSERA_VPCD_READERS or TESSERA_VPCD_LOCK_DIR is not set"
        );
    };
    let ports: Vec<u16> = ports
        .split(',')
        .map(|p| {
            p.trim()
                .parse()
                .unwrap_or_else(|_| panic!("TESSERA_VPCD_PORTS has a bad port {p:?}"))
        })
        .collect();
    let names: Vec<String> = names.split(';').map(str::to_owned).collect();
    assert_eq!(
        ports.len(),
        names.len(),
        "TESSERA_VPCD_PORTS and TESSERA_VPCD_READERS must list as many entries; {RUN_UNDER_HARNESS}"
    );
    let readers = ports
        .into_iter()
        .zip(names)
        .map(|(port, name)| Reader { port, name })
        .collect();
    (readers, PathBuf::from(lock_dir))
}

/// How the card is started: emulated firmware, serial, form factor and any further flags
/// (faults, policies) passed through verbatim.
#[derive(Clone, Debug)]
pub struct CardOptions {
    pub firmware: String,
    pub serial: u32,
    pub form_factor: Option<String>,
    pub extra_args: Vec<String>,
}

impl Default for CardOptions {
    fn default() -> Self {
        CardOptions {
            firmware: "5.4.3".into(),
            serial: 12_345_678,
            form_factor: None,
            extra_args: Vec::new(),
        }
    }
}

impl CardOptions {
    /// A card emulating the given firmware ("5.4.3": 3DES default management key; "5.7.4": AES-192).
    pub fn firmware(version: &str) -> Self {
        CardOptions {
            firmware: version.into(),
            ..CardOptions::default()
        }
    }

    pub fn serial(mut self, serial: u32) -> Self {
        self.serial = serial;
        self
    }

    pub fn form_factor(mut self, form_factor: &str) -> Self {
        self.form_factor = Some(form_factor.into());
        self
    }

    /// Further command-line flags for `tessera-vpiv` (faults and the like).
    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// A running `tessera-vpiv` attached to a claimed reader. Dropping it kills the card and releases
/// the reader.
pub struct VirtualCard {
    child: Option<Child>,
    reader: Reader,
    options: CardOptions,
    dir: tempfile::TempDir,
    // Held for the card's lifetime: the exclusive lock on this reader's lock file, which also
    // records the card's process id.
    claim: File,
}

impl VirtualCard {
    /// Claims a free reader, starts a card with a fresh state file on it and waits until pcscd
    /// reports the card present.
    pub fn start(options: CardOptions) -> VirtualCard {
        let (reader, claim) = claim_reader();
        let dir = tempfile::Builder::new()
            .prefix("tessera-vpiv-")
            .tempdir()
            .expect("cannot create a temporary directory for the card's state");
        let mut card = VirtualCard {
            child: None,
            reader,
            options,
            dir,
            claim,
        };
        card.insert();
        card
    }

    /// The PC/SC name of the reader the card sits in.
    pub fn reader_name(&self) -> &str {
        &self.reader.name
    }

    pub fn port(&self) -> u16 {
        self.reader.port
    }

    pub fn options(&self) -> &CardOptions {
        &self.options
    }

    /// Change how the card starts next time (after [`VirtualCard::pull`], before
    /// [`VirtualCard::insert`]), e.g. to drop a fault flag.
    pub fn options_mut(&mut self) -> &mut CardOptions {
        &mut self.options
    }

    /// The card process' exit status if it has ended (a disconnect fault ends it with 0).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// A scratch directory that lives as long as the card (the state file lives here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.path().join("card-state.json")
    }

    /// The PEM file where the card exports its attestation root (a test root it made itself).
    pub fn attestation_root(&self) -> PathBuf {
        self.dir.path().join("attestation-root.pem")
    }

    /// Everything the card wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("card.log")
    }

    /// The command line that starts this card (also used by [`VirtualCard::insert`]).
    fn command(&self) -> Command {
        let mut command = Command::new(vpiv_binary());
        command
            .arg("--port")
            .arg(self.reader.port.to_string())
            .arg("--state")
            .arg(self.state_file())
            .arg("--firmware")
            .arg(&self.options.firmware)
            .arg("--serial")
            .arg(self.options.serial.to_string())
            .arg("--export-root")
            .arg(self.attestation_root());
        if let Some(form_factor) = &self.options.form_factor {
            command.arg("--form-factor").arg(form_factor);
        }
        command.args(&self.options.extra_args);
        // Every APDU with its status word goes to the card's log (secrets redacted by the card).
        if std::env::var_os("TESSERA_VPIV_LOG").is_none() {
            command.env("TESSERA_VPIV_LOG", "debug");
        }
        command
    }

    /// Pulls the card out: kills the process and waits until pcscd sees the reader empty.
    /// The state file stays, so [`VirtualCard::insert`] puts the same card back.
    pub fn pull(&mut self) {
        if let Err(problem) = self.kill_and_wait_until_gone() {
            panic!("{problem}");
        }
    }

    /// Kills the card process and waits until pcscd reports the reader empty. pcscd notices a
    /// vanished card only at its next presence poll; until then the reader still says "present",
    /// and whoever claims the reader next would mistake that for its own card.
    fn kill_and_wait_until_gone(&mut self) -> Result<(), String> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            record_card_pid(&self.claim, None);
        }
        wait_for_reader(&self.reader.name, false, CARD_PRESENT_DEADLINE, || None).map_err(|e| {
            format!(
                "reader {:?} still shows a card after the card was killed: {e}",
                self.reader.name
            )
        })
    }

    /// Starts the card process (again) on this reader and waits until pcscd sees it.
    pub fn insert(&mut self) {
        assert!(self.child.is_none(), "the card is already inserted");
        // A card left behind by a test that died without cleaning up must be gone first.
        if let Err(problem) =
            wait_for_reader(&self.reader.name, false, CARD_PRESENT_DEADLINE, || None)
        {
            panic!(
                "reader {:?} is claimed but not empty: {problem}",
                self.reader.name
            );
        }
        // Right after a card dropped its connection in the middle of a command (a disconnect
        // fault), the vpcd driver sometimes never takes the next connection on that port, while a
        // card started after that one is seen at once (measured: 1 run in 5). So a card pcscd has
        // not seen after REINSERT_AFTER is pulled and started again, as a person re-plugs a token.
        let mut problem = String::new();
        for attempt in 1..=INSERT_ATTEMPTS {
            let deadline = if attempt < INSERT_ATTEMPTS {
                REINSERT_AFTER
            } else {
                CARD_PRESENT_DEADLINE
            };
            match self.start_process_and_wait(deadline) {
                Ok(()) => return,
                Err(why) if self.is_running() && attempt < INSERT_ATTEMPTS => {
                    self.append_to_log(&format!(
                        "harness: pcscd did not see the card within {deadline:?} ({why}); starting it again\n"
                    ));
                    if let Some(mut child) = self.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                }
                Err(why) => {
                    problem = why;
                    break;
                }
            }
        }
        let log = self.log();
        panic!(
            "card on port {} did not appear in reader {:?}: {problem}\n--- card log ---\n{log}",
            self.reader.port, self.reader.name
        );
    }

    fn start_process_and_wait(&mut self, deadline: Duration) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("cannot open the card's log file");
        let child = self
            .command()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot share the card's log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", vpiv_binary().display()));
        record_card_pid(&self.claim, Some(child.id()));
        self.child = Some(child);
        let child = self.child.as_mut().expect("just set");
        wait_for_reader(&self.reader.name, true, deadline, || {
            child.try_wait().ok().flatten()
        })
    }

    fn append_to_log(&self, line: &str) {
        if let Ok(mut log) = OpenOptions::new().append(true).open(self.log_file()) {
            let _ = log.write_all(line.as_bytes());
        }
    }

    /// Whether the card process is still running (a card must survive bad input).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs an external tool against this card; see [`run_tool`].
    /// `yubico-piv-tool --reader <this card's reader> ARGS…`. Secrets go in through stdin
    /// (`--stdin-input`, `-k` without a value).
    pub fn yubico_piv_tool(&self, args: &[&str], stdin: Option<&str>) -> ToolRun {
        let mut all = vec!["--reader", self.reader_name()];
        all.extend_from_slice(args);
        run_tool("yubico-piv-tool", &all, stdin, &[])
    }

    /// `ykman --reader <this card's reader> ARGS…`; ykman reads PINs and keys from stdin when it
    /// prompts (a blank management key means the default one).
    pub fn ykman(&self, args: &[&str], stdin: Option<&str>) -> ToolRun {
        let mut all = vec!["--reader", self.reader_name()];
        all.extend_from_slice(args);
        run_tool("ykman", &all, stdin, &[])
    }

    /// `pkcs11-tool` with OpenSC's PKCS#11 module on this card's slot. The PIN, if any, is put in
    /// the environment for `--pin env:TESSERA_TEST_PIN`, never on the command line.
    pub fn pkcs11_tool(&self, args: &[&str], pin: Option<&str>) -> ToolRun {
        assert!(
            Path::new(OPENSC_PKCS11_MODULE).exists(),
            "OpenSC's PKCS#11 module {OPENSC_PKCS11_MODULE} is missing; run scripts/install-deps.sh (as root)"
        );
        let mut all = vec![
            "--module",
            OPENSC_PKCS11_MODULE,
            "--slot-description",
            self.reader_name(),
        ];
        all.extend_from_slice(args);
        let opensc_conf = self.opensc_conf();
        let mut env = vec![("OPENSC_CONF", path_str(&opensc_conf))];
        if let Some(pin) = pin {
            env.push(("TESSERA_TEST_PIN", pin));
        }
        run_tool("pkcs11-tool", &all, None, &env)
    }

    /// An OpenSC configuration (for `OPENSC_CONF`) that ignores every harness reader but this
    /// card's. OpenSC otherwise connects to every card it finds and probes it (SELECTs of other
    /// applications, which on a YubiKey drop a verified PIN), disturbing the other tests' cards.
    pub fn opensc_conf(&self) -> PathBuf {
        let (readers, _) = harness_readers();
        let others: Vec<String> = readers
            .iter()
            .filter(|r| r.name != self.reader.name)
            .map(|r| format!("{:?}", r.name))
            .collect();
        let mut conf = String::from("app default {\n\tframework pkcs15 {\n\t}\n");
        if !others.is_empty() {
            conf.push_str(&format!("\tignored_readers = {};\n", others.join(", ")));
        }
        conf.push_str("}\n");
        let path = self.dir.path().join("opensc.conf");
        std::fs::write(&path, conf).expect("cannot write the card's OpenSC configuration");
        path
    }
}

impl Drop for VirtualCard {
    fn drop(&mut self) {
        // The reader is released (the lock file closed) only after this, when it is empty again.
        let gone = self.kill_and_wait_until_gone();
        if thread::panicking() {
            eprintln!(
                "--- log of the card on {:?} ---\n{}",
                self.reader.name,
                self.log()
            );
        }
        if let Err(problem) = gone {
            eprintln!("{problem}");
        }
    }
}

/// Claims a reader nobody else uses: an exclusive lock on `<lock dir>/<port>.lock`, held until the
/// returned file is dropped (also when the process dies, so a crashed test frees its reader).
fn claim_reader() -> (Reader, File) {
    let (readers, lock_dir) = harness_readers();
    let started = Instant::now();
    loop {
        for reader in &readers {
            let path = lock_dir.join(format!("{}.lock", reader.port));
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot open the reader lock {}: {e}; {RUN_UNDER_HARNESS}",
                        path.display()
                    )
                });
            if file.try_lock().is_ok() {
                reap_orphan_card(&file, reader.port);
                return (reader.clone(), file);
            }
        }
        assert!(
            started.elapsed() < CLAIM_DEADLINE,
            "no free vpcd reader among {} for {:?}; give scripts/with-pcscd.sh more --readers or run fewer tests at once",
            readers.len(),
            CLAIM_DEADLINE
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The lock file holds the process id of the card started by its last owner. A test killed from
/// outside (a timeout) cannot stop its card, which then stays in the reader; the next owner ends
/// that card, after checking that the process is still a `tessera-vpiv` on this port.
fn reap_orphan_card(lock: &File, port: u16) {
    let mut recorded = String::new();
    let _ = (&*lock).read_to_string(&mut recorded);
    let Ok(pid) = recorded.trim().parse::<u32>() else {
        return;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_our_card = args.first().is_some_and(|a| a.ends_with(b"tessera-vpiv"))
        && args
            .windows(2)
            .any(|w| w[0] == b"--port" && w[1] == port.to_string().as_bytes());
    if is_our_card {
        let _ = Command::new("kill").arg(pid.to_string()).status();
    }
}

/// Records the running card's process id in the reader's lock file (see [`reap_orphan_card`]).
fn record_card_pid(lock: &File, pid: Option<u32>) {
    let _ = lock.set_len(0);
    let _ = (&*lock).seek(SeekFrom::Start(0));
    if let Some(pid) = pid {
        let _ = (&*lock).write_all(pid.to_string().as_bytes());
    }
}

/// Waits until pcscd reports the reader with (`present`) or without a card. `exited` is polled
/// so a card process that dies at start-up fails fast with its status.
fn wait_for_reader(
    name: &str,
    present: bool,
    deadline: Duration,
    mut exited: impl FnMut() -> Option<ExitStatus>,
) -> Result<(), String> {
    let context = pcsc::Context::establish(pcsc::Scope::User)
        .map_err(|e| format!("cannot reach pcscd ({e}); {RUN_UNDER_HARNESS}"))?;
    let cname = CString::new(name).map_err(|_| "reader name contains a NUL byte".to_string())?;
    let mut states = [pcsc::ReaderState::new(cname, pcsc::State::UNAWARE)];
    let started = Instant::now();
    loop {
        if let Some(status) = exited() {
            return Err(format!("the card process exited ({status})"));
        }
        match context.get_status_change(Duration::from_millis(200), &mut states) {
            Ok(()) | Err(pcsc::Error::Timeout) => {}
            Err(e) => return Err(format!("pcscd does not answer for this reader: {e}")),
        }
        let state = states[0].event_state();
        if state.contains(pcsc::State::UNKNOWN) {
            return Err(format!(
                "pcscd does not know this reader; {RUN_UNDER_HARNESS}"
            ));
        }
        if state.contains(pcsc::State::PRESENT) == present {
            return Ok(());
        }
        states[0].sync_current_state();
        if started.elapsed() > deadline {
            return Err(format!(
                "gave up after {deadline:?}; last reader state {state:?}"
            ));
        }
    }
}

/// What a finished external tool gave back.
#[derive(Debug)]
pub struct ToolRun {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ToolRun {
    /// Fails the test (showing everything the tool printed) unless it exited with 0.
    #[track_caller]
    pub fn success(self) -> ToolRun {
        assert_eq!(self.code, Some(0), "{self}");
        self
    }

    /// Fails the test unless the tool exited with exactly `code`.
    #[track_caller]
    pub fn exit_code(self, code: i32) -> ToolRun {
        assert_eq!(self.code, Some(code), "{self}");
        self
    }

    /// Fails the test unless the tool failed (a non-zero exit code).
    #[track_caller]
    pub fn failure(self) -> ToolRun {
        assert!(
            matches!(self.code, Some(c) if c != 0),
            "expected a failure; {self}"
        );
        self
    }

    /// Fails the test unless stdout and stderr together contain `line` (a whole line, trimmed).
    #[track_caller]
    pub fn has_line(self, line: &str) -> ToolRun {
        let found = self
            .stdout
            .lines()
            .chain(self.stderr.lines())
            .any(|l| l.trim() == line);
        assert!(found, "expected the line {line:?}; {self}");
        self
    }

    /// Fails the test unless stdout or stderr contains `text` somewhere.
    #[track_caller]
    pub fn mentions(self, text: &str) -> ToolRun {
        assert!(
            self.stdout.contains(text) || self.stderr.contains(text),
            "expected {text:?} in the output; {self}"
        );
        self
    }
}

impl std::fmt::Display for ToolRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.code, self.stdout, self.stderr
        )
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Runs `program args…`, feeding `stdin` (secrets go here, never on the command line where a
/// tool allows it) and extra environment variables; captures the exit code and output. A missing
/// program fails the test with the install command.
pub fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    env: &[(&str, &str)],
) -> ToolRun {
    let command_line = std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("{program} is not installed; run scripts/install-deps.sh (as root)")
        }
        Err(e) => panic!("cannot start {program}: {e}"),
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_owned();
        // A tool may exit before reading all of its input; that is its business, not an error.
        thread::spawn(move || {
            let _ = pipe.write_all(input.as_bytes());
        });
    }
    let mut stdout_pipe = child.stdout.take().expect("stdout is piped");
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let stdout_reader = thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout_pipe.read_to_end(&mut out);
        out
    });
    let stderr_reader = thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stderr_pipe.read_to_end(&mut out);
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for the tool") {
            break status;
        }
        if started.elapsed() > TOOL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{command_line}` hung for {TOOL_DEADLINE:?} and was killed");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stdout =
        String::from_utf8_lossy(&stdout_reader.join().expect("stdout reader")).into_owned();
    let stderr =
        String::from_utf8_lossy(&stderr_reader.join().expect("stderr reader")).into_owned();
    ToolRun {
        command: command_line,
        code: status.code(),
        stdout,
        stderr,
    }
}
