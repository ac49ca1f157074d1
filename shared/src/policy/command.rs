//! Command lines as a POSIX shell on an SSH host will run them, read well enough to judge:
//! split into simple commands (at `;`, `&`, `&&`, `||`, `|`, parentheses and newlines, outside
//! quotes), each a list of words with quotes and escapes removed, redirections taken out, and
//! the pipes between them kept.
//!
//! The reader is strict: a line is *opaque* when the words the shell will run cannot be known
//! from its text, or when the shell could read it differently: expansions (`$x`, `${x}`,
//! `$(...)`, backticks, `$'...'`), here-documents, process substitution, brace expansion,
//! control characters or unusual whitespace, a program named by a pattern, and programs that
//! run code the line does not show (a shell or interpreter, which would read its program from
//! standard input or an argument; `eval`, `xargs`, `find -exec`, `alias`...). Command rules
//! cannot see into an opaque line, so where a resource has command rules it is refused.
//!
//! (shell-words splits words but does not know operators, so `rm -rf /;ls` would be one word
//! list to it; this reader knows both.)

use crate::identity::mapping::glob_match;

/// The longest command line judged (longer ones are refused): judging stays cheap.
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The most words a command line may have.
pub const MAX_WORDS: usize = 4096;

/// One simple command: the words the shell runs, and whether its output is piped to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Simple {
    pub words: Vec<String>,
    pub piped_to_next: bool,
    /// It redirects input or output to a file (`>`, `<`, `>>`...; not `2>&1`).
    pub redirects: bool,
}

/// A command line, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub commands: Vec<Simple>,
    /// Why the words the shell will run cannot be known from the text, when they cannot.
    pub opaque: Option<String>,
}

/// Programs that run code they read (a script on standard input or in an argument) or run
/// commands the line does not show: wherever one could be the program, the line is opaque.
const RUNS_HIDDEN: &[&str] = &[
    "sh",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "ash",
    "fish",
    "csh",
    "tcsh",
    "busybox",
    "python",
    "python2",
    "python3",
    "pypy",
    "pypy3",
    "perl",
    "ruby",
    "node",
    "nodejs",
    "deno",
    "php",
    "lua",
    "tclsh",
    "wish",
    "expect",
    "awk",
    "gawk",
    "mawk",
    "nawk",
    "sed",
    "eval",
    "source",
    "xargs",
    "parallel",
    "watch",
    "script",
    "flock",
    "su",
    "ssh",
    "scp",
    "sftp",
    "rsync",
    "crontab",
    "at",
    "batch",
    "alias",
    "unalias",
    "shopt",
    "setopt",
    "hash",
    "enable",
    "trap",
    "function",
    "declare",
    "typeset",
    "readonly",
    "export",
    "set",
    "vi",
    "vim",
    "nvim",
    "emacs",
    "ed",
    "ex",
    "less",
    "more",
    "man",
    "git",
    "make",
    "systemd-run",
    "unshare",
    "nsenter",
    "gdb",
];

/// Programs that run the program named by a later word (which may follow options of theirs):
/// every later word could be the program.
const WRAPPERS: &[&str] = &[
    "sudo",
    "doas",
    "env",
    "nice",
    "ionice",
    "nohup",
    "timeout",
    "time",
    "command",
    "builtin",
    "exec",
    "setsid",
    "stdbuf",
    "chrt",
    "taskset",
    "chroot",
    "runuser",
    "strace",
    "ltrace",
    "unbuffer",
    "catchsegv",
    "find",
    "then",
    "do",
    "else",
    "elif",
    "if",
    "while",
    "until",
    "!",
];

impl CommandLine {
    /// Read `line`. Refuses what a shell would not read either (an unterminated quote) and
    /// lines too long to judge.
    pub fn parse(line: &str) -> Result<CommandLine, String> {
        if line.len() > MAX_LINE_BYTES {
            return Err(format!("the command line is longer than {MAX_LINE_BYTES} bytes"));
        }
        let mut reader = Reader::default();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\'' => {
                    reader.started();
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some(c) => reader.quoted(c),
                            None => return Err("unterminated single quote".into()),
                        }
                    }
                }
                '"' => {
                    reader.started();
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some(e @ ('"' | '\\' | '$' | '`')) => reader.quoted(e),
                                Some('\n') => {}
                                Some(other) => {
                                    reader.quoted('\\');
                                    reader.quoted(other);
                                }
                                None => return Err("unterminated double quote".into()),
                            },
                            Some('`') => reader.opaque("command substitution"),
                            Some('$') if expands(chars.peek()) => reader.opaque("an expansion ($...)"),
                            Some(c) => reader.quoted(c),
                            None => return Err("unterminated double quote".into()),
                        }
                    }
                }
                '\\' => match chars.next() {
                    Some('\n') => {}
                    Some(c) => reader.quoted(c),
                    None => reader.bare('\\'),
                },
                '`' => reader.opaque("command substitution"),
                '$' if chars.peek() == Some(&'\'') => reader.opaque("ANSI-C quoting ($'...')"),
                '$' if expands(chars.peek()) => reader.opaque("an expansion ($...)"),
                '<' | '>' if chars.peek() == Some(&'(') => reader.opaque("process substitution"),
                '<' if chars.peek() == Some(&'<') => reader.opaque("a here-document"),
                '<' | '>' => {
                    // `2>&1` duplicates a descriptor; anything else opens a file.
                    let mut ampersand = false;
                    while let Some(next) = chars.peek().copied().filter(|c| matches!(c, '>' | '&' | '|')) {
                        ampersand |= next == '&';
                        chars.next();
                    }
                    let duplicates = ampersand && chars.peek().is_some_and(|c| c.is_ascii_digit() || *c == '-');
                    reader.redirect(duplicates);
                }
                '#' if reader.word.is_none() => {
                    // A comment, to the end of the line.
                    while chars.peek().is_some_and(|c| *c != '\n') {
                        chars.next();
                    }
                }
                ';' | '\n' | '(' | ')' => reader.end_command(false),
                '&' if chars.peek() == Some(&'>') => {
                    chars.next();
                    reader.redirect(false);
                }
                '&' => {
                    if chars.peek() == Some(&'&') {
                        chars.next();
                    }
                    reader.end_command(false);
                }
                '|' => {
                    let pipe = chars.peek() != Some(&'|');
                    if !pipe {
                        chars.next();
                    }
                    reader.end_command(pipe);
                }
                ' ' | '\t' => reader.end_word(),
                c if c.is_control() || c.is_whitespace() => {
                    reader.opaque("control characters or unusual whitespace");
                }
                c => reader.bare(c),
            }
            if reader.count > MAX_WORDS {
                return Err(format!("the command line has more than {MAX_WORDS} words"));
            }
        }
        reader.end_command(false);
        let Reader { commands, opaque, .. } = reader;
        let opaque = opaque.or_else(|| commands.iter().find_map(runs_hidden_code));
        Ok(CommandLine { commands: commands.into_iter().map(|c| c.simple).collect(), opaque })
    }

    /// Whether `pattern` (see [`Pattern`]) matches a command of this line.
    pub fn matches(&self, pattern: &Pattern) -> bool {
        let n = pattern.stages.len();
        if n == 0 || self.commands.len() < n {
            return false;
        }
        (0..=self.commands.len() - n).any(|start| {
            pattern.stages.iter().enumerate().all(|(i, stage)| {
                let command = &self.commands[start + i];
                let piped = i + 1 == n || command.piped_to_next;
                piped && stage.matches(&command.words)
            })
        })
    }

    /// Why this line is not within `allowed` (patterns matched word by word, see
    /// [`Pattern::allows`]): every simple command must be allowed by one, and an allow-listed
    /// line may not set variables or redirect to files.
    pub fn outside(&self, allowed: &[Pattern]) -> Option<String> {
        if let Some(why) = &self.opaque {
            return Some(why.clone());
        }
        for command in &self.commands {
            if command.words.first().is_some_and(|w| is_assignment(w)) {
                return Some("it sets environment variables".into());
            }
            if command.redirects {
                return Some("it redirects to a file".into());
            }
            if !allowed.iter().any(|p| p.allows(&command.words)) {
                return Some(format!("{:?} is not an allowed command", command.words.join(" ")));
            }
        }
        None
    }
}

/// Whether a `$` followed by this character starts an expansion.
fn expands(next: Option<&char>) -> bool {
    next.is_some_and(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '_' | '{' | '(' | '@' | '*' | '#' | '?' | '$' | '!' | '-')
    })
}

/// A command rule, as written in a policy: a program and arguments, e.g. `rm -rf /`,
/// `shutdown`, `curl * | sh`. Each word is a glob (`*`, `?`). As a denial or a hold, it matches
/// a simple command that runs the program (its name or its path, anywhere in the command, so
/// behind `sudo`, `env` or `nice` too) with each pattern argument matching one of the arguments
/// after it, in any order; `a | b` matches `a` piped into `b`. As an allowance, it matches word
/// by word (`...` standing for any number of words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stage {
    program: String,
    arguments: Vec<String>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let line = CommandLine::parse(text)?;
        let mut stages = Vec::new();
        for (i, command) in line.commands.iter().enumerate() {
            if !command.piped_to_next && i + 1 != line.commands.len() {
                return Err("a pattern is one command, or commands joined by |".into());
            }
            let mut words = command.words.iter();
            let program = words.next().ok_or("a pattern stage names no program")?.clone();
            stages.push(Stage { program, arguments: words.cloned().collect() });
        }
        if stages.is_empty() {
            return Err("an empty pattern".into());
        }
        Ok(Pattern { stages })
    }

    /// Whether this pattern allows a simple command with these words: the program (by name or
    /// path) then each word in turn, `...` matching any number of words. A pattern with a pipe
    /// allows nothing (each command of a pipeline is allowed on its own).
    pub fn allows(&self, words: &[String]) -> bool {
        let [stage] = &self.stages[..] else { return false };
        let Some((program, rest)) = words.split_first() else { return false };
        let name = program.rsplit('/').next().unwrap_or(program);
        (glob_match(&stage.program, name) || glob_match(&stage.program, program)) && words_match(&stage.arguments, rest)
    }
}

/// Word-by-word glob match, `...` matching any number of words.
fn words_match(pattern: &[String], words: &[String]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((first, rest)) if first == "..." => (0..=words.len()).any(|skip| words_match(rest, &words[skip..])),
        Some((first, rest)) => {
            words.split_first().is_some_and(|(w, more)| glob_match(first, w) && words_match(rest, more))
        }
    }
}

impl Stage {
    /// Some word runs the program and every argument matches a word after it. Linear in the
    /// words: the program must come before the earliest of the arguments' last matches.
    fn matches(&self, words: &[String]) -> bool {
        let mut bound = words.len();
        for argument in self.arguments.iter().filter(|a| *a != "...") {
            match words.iter().rposition(|w| glob_match(argument, w)) {
                Some(at) => bound = bound.min(at),
                None => return false,
            }
        }
        words[..bound].iter().any(|word| {
            let name = word.rsplit('/').next().unwrap_or(word);
            glob_match(&self.program, name) || glob_match(&self.program, word)
        })
    }
}

/// A simple command being read, with what the reader noticed about its words.
#[derive(Default)]
struct Command {
    simple: Simple,
    /// Per word: its unquoted characters (globs and braces only count there).
    bare: Vec<String>,
}

#[derive(Default)]
struct Reader {
    commands: Vec<Command>,
    current: Command,
    word: Option<String>,
    bare: String,
    /// The next word is a redirection's target, not an argument.
    target_next: bool,
    opaque: Option<String>,
    count: usize,
}

impl Reader {
    fn started(&mut self) {
        self.word.get_or_insert_with(String::new);
    }

    fn quoted(&mut self, c: char) {
        self.word.get_or_insert_with(String::new).push(c);
    }

    fn bare(&mut self, c: char) {
        self.quoted(c);
        self.bare.push(c);
    }

    fn opaque(&mut self, why: &str) {
        self.opaque.get_or_insert_with(|| why.to_owned());
        self.quoted('$');
    }

    /// `<` or `>` seen: a descriptor number right before it belongs to it; the next word is
    /// the target, unless it duplicates a descriptor (`>&1`).
    fn redirect(&mut self, duplicates: bool) {
        if self.word.as_deref().is_some_and(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_digit())) {
            self.word = None;
            self.bare.clear();
        }
        self.end_word();
        self.current.simple.redirects |= !duplicates;
        self.target_next = true;
    }

    fn end_word(&mut self) {
        let bare = std::mem::take(&mut self.bare);
        let Some(word) = self.word.take() else { return };
        if std::mem::take(&mut self.target_next) {
            return;
        }
        // `{ ...; }` groups commands; as words of their own, braces run nothing.
        if word == "{" || word == "}" {
            return;
        }
        if bare.contains('{') && bare.contains('}') && (bare.contains(',') || bare.contains("..")) {
            self.opaque.get_or_insert_with(|| "brace expansion".to_owned());
        }
        self.count += 1;
        self.current.simple.words.push(word);
        self.current.bare.push(bare);
    }

    fn end_command(&mut self, piped_to_next: bool) {
        self.end_word();
        self.target_next = false;
        let mut command = std::mem::take(&mut self.current);
        if !command.simple.words.is_empty() {
            command.simple.piped_to_next = piped_to_next;
            self.commands.push(command);
        }
    }
}

/// Why a simple command runs code its words do not show, if it does.
fn runs_hidden_code(command: &Command) -> Option<String> {
    let words = &command.simple.words;
    // Assignments (`X=1 cmd`) come before the program.
    let first = words.iter().position(|w| !is_assignment(w))?;
    let mut wrapped = false;
    for (at, word) in words.iter().enumerate().skip(first) {
        if at > first && !wrapped {
            break;
        }
        let bare = &command.bare[at];
        if bare.contains(['*', '?', '[']) {
            return Some(format!("a program named by a pattern ({word})"));
        }
        let name = word.rsplit('/').next().unwrap_or(word);
        // `.` sources a file as the program (or run by `command`/`builtin`); elsewhere it is a path.
        let runs_builtin = at == first || matches!(words[at - 1].as_str(), "command" | "builtin");
        if word == "." && runs_builtin {
            return Some(". runs code the command line does not show".into());
        }
        let base = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
        if RUNS_HIDDEN.contains(&name) || RUNS_HIDDEN.contains(&base) {
            return Some(format!("{name} runs code the command line does not show"));
        }
        if name == "find" && words[at + 1..].iter().any(|w| w.starts_with("-exec") || w.starts_with("-ok")) {
            return Some("find runs a command given as arguments".into());
        }
        if name == "env" && words[at + 1..].iter().any(|w| w.starts_with("--split") || is_short_option_with(w, 'S')) {
            return Some("env splits a command given as text".into());
        }
        wrapped = wrapped || WRAPPERS.contains(&name);
    }
    None
}

fn is_short_option_with(word: &str, option: char) -> bool {
    word.starts_with('-') && !word.starts_with("--") && word.contains(option)
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=')
        .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

#[cfg(test)]
mod tests;
