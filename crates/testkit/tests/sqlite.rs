//! `TempSqlite` creates a usable directory and removes it on drop.

use sluice_testkit::TempSqlite;

#[test]
fn temp_sqlite_creates_and_cleans_up() {
    let db = TempSqlite::new();
    let dir = db.dir().to_path_buf();
    assert!(dir.is_dir());
    assert_eq!(db.path(), dir.join("test.db"));
    assert!(!db.path().exists(), "database file must not be pre-created");

    // Simulate what SQLite would leave behind.
    std::fs::write(db.path(), b"x").expect("write db file");
    std::fs::write(dir.join("test.db-wal"), b"x").expect("write wal file");
    drop(db);
    assert!(!dir.exists(), "{} should be removed on drop", dir.display());
}

#[test]
fn temp_sqlite_instances_are_distinct() {
    let a = TempSqlite::default();
    let b = TempSqlite::try_new().expect("temp dir");
    assert_ne!(a.dir(), b.dir());
}
