//! The operator console in a real browser: `console/`'s own suite
//! (playwright-core driving Debian's Chromium, `node --test`) against a live
//! engine, run as a child process with the engine's address and
//! credentials. It checks that the files the engine serves are what the
//! sources build, and writes screenshots of each page under
//! `reports/console/`.

use std::path::{Path, PathBuf};

use harness::stack::Stack;

fn console_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../console")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_console_in_a_real_browser() {
    let stack = Stack::start(crate::infra(), "console").await.unwrap();
    let env = [
        ("TXENGINE_URL", stack.url.clone()),
        ("TXENGINE_ADMIN_TOKEN", stack.admin_token.clone()),
        ("TXENGINE_API_KEY", stack.api_key.clone().unwrap()),
    ];
    // A blocking child process: on a thread of its own, so the engine's
    // tasks go on serving the browser.
    let checked = tokio::task::spawn_blocking(move || {
        crate::run_suite(
            "the console's browser",
            &console_dir(),
            Path::new("npm"),
            &["test", "--silent"],
            &env,
        )
    })
    .await;
    stack.stop().await.unwrap();
    checked.unwrap().unwrap();
}
