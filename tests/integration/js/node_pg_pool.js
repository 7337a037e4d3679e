// node-postgres pg.Pool doing what Prisma's $transaction does: BEGIN, set the token for this
// transaction, the queries, COMMIT, over a small shared pool. Prints one JSON line of results.
const { Pool } = require("pg");

async function main() {
  const { port, tokens, rounds } = JSON.parse(process.env.RLSPROXY_TEST);
  const pool = new Pool({
    host: "127.0.0.1",
    port,
    user: "app",
    database: "app",
    max: 2,
    options: "-c rlsproxy.jwt=", // anonymous at startup; each transaction brings its user's token
  });
  const users = Object.keys(tokens);
  const results = [];
  const one = async (user) => {
    const client = await pool.connect();
    try {
      await client.query("BEGIN");
      const set = await client.query("SELECT set_config('rlsproxy.jwt', $1, true)", [tokens[user]]);
      const who = await client.query(
        "SELECT auth.uid()::text AS uid, current_user::text AS role, count(*)::int AS n FROM notes"
      );
      await client.query("COMMIT");
      results.push({ user, echoed: set.rows[0].set_config === tokens[user], ...who.rows[0] });
    } finally {
      client.release();
    }
  };
  for (let i = 0; i < rounds; i++) {
    await Promise.all([one(users[i % 2]), one(users[(i + 1) % 2])]);
  }
  const client = await pool.connect();
  const after = await client.query("SELECT coalesce(auth.uid()::text, 'anon') AS uid, count(*)::int AS n FROM notes");
  client.release();
  await pool.end();
  console.log(JSON.stringify({ results, after: after.rows[0] }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
