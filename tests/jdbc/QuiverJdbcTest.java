// JDBC (Debian's libpostgresql-jdbc-java) against a Quiver server whose port
// is the first argument: batched inserts with vector parameters, a prepared
// k-NN query run past the driver's prepareThreshold (server-side prepared
// statements), DatabaseMetaData.getTables/getColumns (vector reported as
// type vector) and a rolled-back transaction. Run as a single-file source
// program by tests/python/test_jdbc.py; prints ok or throws.
import java.sql.*;
import java.util.*;

public class QuiverJdbcTest {
    static void check(boolean ok, String what) { if (!ok) throw new AssertionError(what); }
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/postgres";
        try (Connection conn = DriverManager.getConnection(url, "postgres", "")) {
            try (Statement st = conn.createStatement()) {
                st.execute("DROP TABLE IF EXISTS jdbc_items");
                st.execute("CREATE TABLE jdbc_items (id bigserial PRIMARY KEY, name text NOT NULL, embedding vector(3))");
            }
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO jdbc_items (name, embedding) VALUES (?, ?::vector)")) {
                String[][] rows = {{"a", "[1,1,1]"}, {"b", "[2,2,2]"}, {"c", "[1,1,2]"}};
                for (String[] r : rows) { ps.setString(1, r[0]); ps.setString(2, r[1]); ps.addBatch(); }
                ps.executeBatch();
            }
            List<String> names = new ArrayList<>();
            try (PreparedStatement ps = conn.prepareStatement("SELECT name, embedding::text FROM jdbc_items ORDER BY embedding <-> ?::vector LIMIT ?")) {
                for (int round = 0; round < 6; round++) {  // past prepareThreshold: server-side prepared
                    names.clear();
                    ps.setString(1, "[1,1,1]");
                    ps.setInt(2, 5);
                    try (ResultSet rs = ps.executeQuery()) { while (rs.next()) names.add(rs.getString(1)); }
                }
            }
            check(names.equals(Arrays.asList("a", "c", "b")), "knn order " + names);
            DatabaseMetaData md = conn.getMetaData();
            boolean found = false;
            try (ResultSet rs = md.getTables(null, "public", "jdbc_items", new String[]{"TABLE"})) {
                while (rs.next()) found |= rs.getString("TABLE_NAME").equals("jdbc_items");
            }
            check(found, "getTables");
            Map<String, String> cols = new LinkedHashMap<>();
            try (ResultSet rs = md.getColumns(null, "public", "jdbc_items", null)) {
                while (rs.next()) cols.put(rs.getString("COLUMN_NAME"), rs.getString("TYPE_NAME"));
            }
            check(cols.keySet().equals(new LinkedHashSet<>(Arrays.asList("id", "name", "embedding"))), "getColumns " + cols);
            check("vector".equals(cols.get("embedding")), "vector type name " + cols);
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) { st.execute("INSERT INTO jdbc_items (name) VALUES ('d')"); }
            conn.rollback();
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT count(*) FROM jdbc_items")) {
                rs.next(); check(rs.getLong(1) == 3, "rollback");
            }
            conn.commit();
        }
        System.out.println("ok");
    }
}
