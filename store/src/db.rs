//! One connection type over both databases, and the queries that run on it.
//!
//! Every operation of the store is an ordinary `async fn` over [`Conn`], written once. A `Conn`
//! is a write transaction ([`Store::write`]) or a pooled connection for reads ([`Store::read`]) on
//! PostgreSQL or SQLite; a [`Query`] carries its SQL (the portable subset both databases speak:
//! `$n` parameters, `ON CONFLICT`, `RETURNING`, epoch-ms BIGINTs, JSON as text) and its bound
//! values as plain [`Value`]s, and is handed to the matching sqlx driver only when it runs. This
//! is River's driver/executor split in miniature: the operations know one executor, the executor
//! knows the drivers. Where the databases really differ, an operation asks [`Conn::dialect`].

use std::borrow::Cow;
use std::marker::PhantomData;

use enclii_queue::{NewJob, NewPipeline, PipelineEnqueued};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{AssertSqlSafe, FromRow, PgConnection, Postgres, Sqlite, SqliteConnection, Transaction};
use tokio::sync::MutexGuard;

use crate::error::Result;
use crate::{Db, Store};

/// Which database a [`Conn`] talks to, for the few statements that differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// A connection to the control-plane database: a write transaction or a pooled read connection.
/// Mutating operations enqueue their jobs through it ([`Conn::enqueue`]), so that the jobs commit
/// with the rows they belong to when the queue lives in the same database.
pub struct Conn<'s> {
    link: Link<'s>,
    store: &'s Store,
}

enum Link<'s> {
    PostgresTx(Transaction<'static, Postgres>),
    PostgresPooled(PoolConnection<Postgres>),
    /// SQLite's writers of this process queue on the queue's writer lock (held until commit).
    SqliteTx(MutexGuard<'s, ()>, Transaction<'static, Sqlite>),
    SqlitePooled(PoolConnection<Sqlite>),
}

/// What a [`Store::write_deciding`] operation decided about its transaction.
pub(crate) enum Decided<T> {
    Commit(T),
    RollBack(T),
}

/// The driver connection under a [`Conn`].
enum Raw<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

impl Store {
    /// Runs `op` in a write transaction, committed when it returns `Ok` (rolled back otherwise).
    pub(crate) async fn write<T>(&self, op: impl for<'c, 's> AsyncFnOnce(&'c mut Conn<'s>) -> Result<T>) -> Result<T> {
        self.write_deciding(async |conn| op(conn).await.map(Decided::Commit))
            .await
    }

    /// [`write`](Self::write) whose `op` decides, without failing, that nothing it did may stay:
    /// its transaction is committed on [`Decided::Commit`], rolled back on [`Decided::RollBack`]
    /// (and on an error).
    pub(crate) async fn write_deciding<T>(
        &self,
        op: impl for<'c, 's> AsyncFnOnce(&'c mut Conn<'s>) -> Result<Decided<T>>,
    ) -> Result<T> {
        let link = match &self.db {
            Db::Postgres(queue) => Link::PostgresTx(queue.pool().begin().await?),
            Db::Sqlite(queue) => {
                let (writer, tx) = queue.begin_write().await?;
                Link::SqliteTx(writer, tx)
            }
        };
        let mut conn = Conn { link, store: self };
        let (out, commit) = match op(&mut conn).await? {
            Decided::Commit(out) => (out, true),
            Decided::RollBack(out) => (out, false),
        };
        match (conn.link, commit) {
            (Link::PostgresTx(tx), true) => tx.commit().await?,
            (Link::PostgresTx(tx), false) => tx.rollback().await?,
            (Link::SqliteTx(_writer, tx), true) => tx.commit().await?,
            (Link::SqliteTx(_writer, tx), false) => tx.rollback().await?,
            (Link::PostgresPooled(_) | Link::SqlitePooled(_), _) => {}
        }
        Ok(out)
    }

    /// Runs `op` on a pooled connection, outside any transaction.
    pub(crate) async fn read<T>(&self, op: impl for<'c, 's> AsyncFnOnce(&'c mut Conn<'s>) -> Result<T>) -> Result<T> {
        let link = match &self.db {
            Db::Postgres(queue) => Link::PostgresPooled(queue.pool().acquire().await?),
            Db::Sqlite(queue) => Link::SqlitePooled(queue.pool().acquire().await?),
        };
        op(&mut Conn { link, store: self }).await
    }
}

impl Conn<'_> {
    pub fn dialect(&self) -> Dialect {
        match self.link {
            Link::PostgresTx(_) | Link::PostgresPooled(_) => Dialect::Postgres,
            Link::SqliteTx(..) | Link::SqlitePooled(_) => Dialect::Sqlite,
        }
    }

    fn raw(&mut self) -> Raw<'_> {
        match &mut self.link {
            Link::PostgresTx(tx) => Raw::Postgres(tx),
            Link::PostgresPooled(conn) => Raw::Postgres(conn),
            Link::SqliteTx(_, tx) => Raw::Sqlite(tx),
            Link::SqlitePooled(conn) => Raw::Sqlite(conn),
        }
    }

    /// Whether jobs enqueued on this connection commit (or roll back) with its transaction: the
    /// queue lives in the same database. Otherwise (Redis) they are enqueued at once and stay.
    pub(crate) fn jobs_roll_back(&self) -> bool {
        self.store.same_database
    }

    /// Enqueues a pipeline: in this transaction when the queue lives in the same database,
    /// otherwise on the queue backend (Redis) before the transaction commits.
    pub(crate) async fn enqueue_pipeline(&mut self, pipeline: NewPipeline) -> Result<PipelineEnqueued> {
        let store = self.store;
        if !store.same_database {
            return Ok(store.backend.enqueue_pipeline(pipeline).await?);
        }
        Ok(match (&store.db, self.raw()) {
            (Db::Postgres(queue), Raw::Postgres(conn)) => queue.enqueue_pipeline_in(conn, pipeline).await?,
            (Db::Sqlite(queue), Raw::Sqlite(conn)) => queue.enqueue_pipeline_in(conn, pipeline).await?,
            _ => unreachable!("a connection always belongs to its store's database"),
        })
    }

    /// Enqueues one job, like [`enqueue_pipeline`](Self::enqueue_pipeline); returns its id.
    pub(crate) async fn enqueue(&mut self, job: NewJob) -> Result<i64> {
        let store = self.store;
        let mut enqueued = if !store.same_database {
            store.backend.enqueue(vec![job]).await?
        } else {
            match (&store.db, self.raw()) {
                (Db::Postgres(queue), Raw::Postgres(conn)) => queue.enqueue_in(conn, vec![job]).await?,
                (Db::Sqlite(queue), Raw::Sqlite(conn)) => queue.enqueue_in(conn, vec![job]).await?,
                _ => unreachable!("a connection always belongs to its store's database"),
            }
        };
        Ok(enqueued.remove(0).id)
    }
}

// --- queries ------------------------------------------------------------------------------------

/// A value bound to a query parameter.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    I64(Option<i64>),
    I32(Option<i32>),
    F64(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

/// What can be bound to a query parameter.
pub trait Bind {
    fn value(self) -> Value;
    /// SQL NULL of this type (for `None`).
    fn null() -> Value;
}

macro_rules! bind_as {
    ($variant:ident: $($ty:ty => $convert:expr),* $(,)?) => {$(
        impl Bind for $ty {
            fn value(self) -> Value {
                Value::$variant(Some($convert(self)))
            }
            fn null() -> Value {
                Value::$variant(None)
            }
        }
    )*};
}
bind_as!(I64: i64 => std::convert::identity, &i64 => i64::clone, u32 => i64::from);
bind_as!(I32: i32 => std::convert::identity, &i32 => i32::clone);
bind_as!(F64: f64 => std::convert::identity, &f64 => f64::clone);
bind_as!(Bool: bool => std::convert::identity, &bool => bool::clone);
bind_as!(Text: &str => str::to_owned, String => std::convert::identity, &String => String::clone);
bind_as!(Bytes: &[u8] => <[u8]>::to_vec, Vec<u8> => std::convert::identity, &Vec<u8> => Vec::clone);

impl<T: Bind> Bind for Option<T> {
    fn value(self) -> Value {
        self.map_or_else(T::null, T::value)
    }
    fn null() -> Value {
        T::null()
    }
}

impl<T: Bind + Clone> Bind for &Option<T> {
    fn value(self) -> Value {
        self.clone().value()
    }
    fn null() -> Value {
        T::null()
    }
}

impl Bind for &&str {
    fn value(self) -> Value {
        (*self).value()
    }
    fn null() -> Value {
        <&str>::null()
    }
}

/// Several values bound in order: a tuple of [`Bind`]s (see [`Query::binds`]).
pub trait Binds {
    fn values(self, into: &mut Vec<Value>);
}

macro_rules! binds_tuple {
    ($($name:ident $index:tt),+) => {
        impl<$($name: Bind),+> Binds for ($($name,)+) {
            fn values(self, into: &mut Vec<Value>) {
                $(into.push(self.$index.value());)+
            }
        }
    };
}

binds_tuple!(A 0, B 1);
binds_tuple!(A 0, B 1, C 2);
binds_tuple!(A 0, B 1, C 2, D 3);
binds_tuple!(A 0, B 1, C 2, D 3, E 4);
binds_tuple!(A 0, B 1, C 2, D 3, E 4, F 5);
binds_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
binds_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
binds_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
binds_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
binds_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
binds_tuple!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

/// A row type both drivers can decode (`#[derive(sqlx::FromRow)]` gives it).
pub trait Record: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}
impl<T> Record for T where T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

/// How a query's rows become its results.
pub trait Shape {
    type Row: Record;
    type Out;
    fn out(row: Self::Row) -> Self::Out;
}

/// Statements whose rows are not read.
pub struct NoRows;
/// Each row decoded as `T`.
pub struct Rows<T>(PhantomData<fn() -> T>);
/// The first column of each row.
pub struct Column<T>(PhantomData<fn() -> T>);

impl<T: Record> Shape for Rows<T> {
    type Row = T;
    type Out = T;
    fn out(row: T) -> T {
        row
    }
}

impl<T> Shape for Column<T>
where
    (T,): Record,
{
    type Row = (T,);
    type Out = T;
    fn out(row: (T,)) -> T {
        row.0
    }
}

/// A statement and its bound values, not yet tied to a database.
#[must_use = "a query does nothing until it is executed or fetched"]
pub struct Query<S> {
    sql: Cow<'static, str>,
    args: Vec<Value>,
    shape: PhantomData<S>,
}

/// A statement whose rows (if any) are not read: see [`Query::execute`].
pub fn query(sql: impl Into<Cow<'static, str>>) -> Query<NoRows> {
    Query::new(sql)
}

/// A query whose rows decode as `T`.
pub fn query_as<T: Record>(sql: impl Into<Cow<'static, str>>) -> Query<Rows<T>> {
    Query::new(sql)
}

/// A query whose first column is read as `T`.
pub fn query_scalar<T>(sql: impl Into<Cow<'static, str>>) -> Query<Column<T>>
where
    (T,): Record,
{
    Query::new(sql)
}

/// What [`Query::execute`] reports.
#[derive(Clone, Copy, Debug)]
pub struct Executed {
    rows_affected: u64,
}

impl Executed {
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }
}

macro_rules! with_args {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for value in $args {
            query = match value {
                Value::I64(v) => query.bind(v),
                Value::I32(v) => query.bind(v),
                Value::F64(v) => query.bind(v),
                Value::Bool(v) => query.bind(v),
                Value::Text(v) => query.bind(v),
                Value::Bytes(v) => query.bind(v),
            };
        }
        query
    }};
}

impl<S> Query<S> {
    fn new(sql: impl Into<Cow<'static, str>>) -> Self {
        Self {
            sql: sql.into(),
            args: Vec::new(),
            shape: PhantomData,
        }
    }

    pub fn bind(mut self, value: impl Bind) -> Self {
        self.args.push(value.value());
        self
    }

    /// Binds the values of a tuple in order: `.binds((a, b, c))` is `.bind(a).bind(b).bind(c)`.
    pub fn binds(mut self, values: impl Binds) -> Self {
        values.values(&mut self.args);
        self
    }

    /// Runs the statement; its rows, if any, are dropped.
    pub async fn execute(self, conn: &mut Conn<'_>) -> Result<Executed> {
        let sql = AssertSqlSafe(self.sql);
        let rows_affected = match conn.raw() {
            Raw::Postgres(c) => with_args!(sqlx::query::<Postgres>(sql), self.args)
                .execute(c)
                .await?
                .rows_affected(),
            Raw::Sqlite(c) => with_args!(sqlx::query::<Sqlite>(sql), self.args)
                .execute(c)
                .await?
                .rows_affected(),
        };
        Ok(Executed { rows_affected })
    }
}

impl<S: Shape> Query<S> {
    pub async fn fetch_all(self, conn: &mut Conn<'_>) -> Result<Vec<S::Out>> {
        let sql = AssertSqlSafe(self.sql);
        let rows = match conn.raw() {
            Raw::Postgres(c) => {
                with_args!(sqlx::query_as::<Postgres, S::Row>(sql), self.args)
                    .fetch_all(c)
                    .await?
            }
            Raw::Sqlite(c) => {
                with_args!(sqlx::query_as::<Sqlite, S::Row>(sql), self.args)
                    .fetch_all(c)
                    .await?
            }
        };
        Ok(rows.into_iter().map(S::out).collect())
    }

    pub async fn fetch_optional(self, conn: &mut Conn<'_>) -> Result<Option<S::Out>> {
        let sql = AssertSqlSafe(self.sql);
        let row = match conn.raw() {
            Raw::Postgres(c) => {
                with_args!(sqlx::query_as::<Postgres, S::Row>(sql), self.args)
                    .fetch_optional(c)
                    .await?
            }
            Raw::Sqlite(c) => {
                with_args!(sqlx::query_as::<Sqlite, S::Row>(sql), self.args)
                    .fetch_optional(c)
                    .await?
            }
        };
        Ok(row.map(S::out))
    }

    /// The first row; none is an error (sqlx's `RowNotFound`, a database error to callers).
    pub async fn fetch_one(self, conn: &mut Conn<'_>) -> Result<S::Out> {
        Ok(self.fetch_optional(conn).await?.ok_or(sqlx::Error::RowNotFound)?)
    }
}
