//! The test helpers: counts against a real server fail loudly, except a table
//! not created yet while waiting for it; waits end at their deadline; a
//! child's output is read to its last line.

use std::time::Duration;

use sitewatch_pgtest::sql::{count, count_once_created};
use sitewatch_pgtest::wait::wait_for;
use sitewatch_pgtest::Postgres;

#[tokio::test]
async fn counts_read_the_number_and_a_missing_table_is_empty_only_while_waiting() {
    let pg = Postgres::start_temp().expect("start a temp PostgreSQL");
    assert_eq!(
        count_once_created(&pg, "SELECT count(*) FROM later").await,
        0
    );
    pg.psql(
        "postgres",
        "CREATE TABLE later (x int); INSERT INTO later VALUES (1), (2)",
    )
    .expect("create and fill a table");
    wait_for(Duration::from_secs(5), "two rows", || async {
        count_once_created(&pg, "SELECT count(*) FROM later").await == 2
    })
    .await;
    assert_eq!(count(&pg, "SELECT count(*) FROM later").await, 2);
}

#[tokio::test]
#[should_panic(
    expected = "SELECT count(*) FROM missing: db error: ERROR: relation \"missing\" does not exist"
)]
async fn a_failed_count_panics_with_its_sql() {
    let pg = Postgres::start_temp().expect("start a temp PostgreSQL");
    let _ = count(&pg, "SELECT count(*) FROM missing").await;
}

#[tokio::test]
#[should_panic(expected = "SELECT count(x) FROM nothing_at_all(")]
async fn only_a_missing_table_reads_as_empty() {
    let pg = Postgres::start_temp().expect("start a temp PostgreSQL");
    let _ = count_once_created(&pg, "SELECT count(x) FROM nothing_at_all(").await;
}

#[tokio::test]
#[should_panic(expected = "timed out after 200ms waiting for never")]
async fn a_wait_fails_at_its_deadline() {
    wait_for(Duration::from_millis(200), "never", || async { false }).await;
}

#[test]
fn a_childs_lines_arrive_to_the_last_once_it_exits() {
    let mut child = std::process::Command::new("sh")
        .args(["-c", "echo one; echo two"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh starts");
    let out = sitewatch_pgtest::wait::lines(child.stdout.take().expect("stdout"));
    assert!(child.wait().expect("sh exits").success());
    assert_eq!(
        sitewatch_pgtest::wait::rest(&out, Duration::from_secs(5)),
        ["one", "two"]
    );
}
