//! Load-test harness: SMTP injector, smart sink and scenario runner.
