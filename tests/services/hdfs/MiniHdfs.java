// MiniHdfs runs a real HDFS NameNode and DataNode (Hadoop's MiniDFSCluster,
// the same classes the Hadoop daemons run) on loopback for Gaia's tests, plus
// a tiny HTTP control endpoint that the fault tests use to restart, stop and
// start the NameNode and to stop and start the DataNode.
//
// Usage: java -cp CLASSPATH MiniHdfs DATA_DIR NAMENODE_PORT CONTROL_PORT
//
// Control endpoint (127.0.0.1:CONTROL_PORT):
//   GET  /ready             200 when the NameNode is up and out of safe mode
//   POST /namenode/restart  restart the NameNode in place (same port, same data)
//   POST /namenode/stop     stop the NameNode (its port and data are kept)
//   POST /namenode/start    start the stopped NameNode again (no-op when up)
//   POST /datanode/stop     stop the DataNode (its port and data are kept)
//   POST /datanode/start    start the stopped DataNode again
//   POST /shutdown          stop the cluster and exit
import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.File;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

public class MiniHdfs {
  private static MiniDFSCluster cluster;
  private static MiniDFSCluster.DataNodeProperties stoppedDataNode;

  public static void main(String[] args) throws Exception {
    if (args.length != 3) {
      System.err.println("usage: MiniHdfs DATA_DIR NAMENODE_PORT CONTROL_PORT");
      System.exit(2);
    }
    File base = new File(args[0]);
    int nnPort = Integer.parseInt(args[1]);
    int controlPort = Integer.parseInt(args[2]);

    Configuration conf = new Configuration();
    conf.set(MiniDFSCluster.HDFS_MINIDFS_BASEDIR, base.getAbsolutePath());
    // 1 MiB blocks so that tests cross block boundaries.
    conf.setLong("dfs.blocksize", 1048576L);
    conf.setLong("dfs.namenode.fs-limits.min-block-size", 1048576L);
    conf.setInt("dfs.replication", 1);
    conf.setBoolean("dfs.permissions.enabled", false);
    conf.setInt("dfs.safemode.extension", 0);
    conf.set("dfs.namenode.rpc-bind-host", "127.0.0.1");
    conf.set("dfs.datanode.address", "127.0.0.1:0");
    conf.set("dfs.datanode.http.address", "127.0.0.1:0");
    conf.set("dfs.datanode.ipc.address", "127.0.0.1:0");
    conf.set("dfs.namenode.http-address", "127.0.0.1:0");
    // As recommended for clusters serving Gaia (docs/configuration.md): a
    // file may close, and a new block may be allocated, while one committed
    // block still waits for its DataNode report. colinmarc's client cannot
    // retry a refused block allocation, so without this the NameNode's lag
    // behind a busy DataNode fails writes.
    // 16 rather than production's 1 or 2: these clusters' 1 MiB blocks make
    // a 5 GiB write (make test-long) ask for 5,000 blocks while a loaded
    // 2-core machine delays the DataNode's reports by several blocks.
    conf.setInt("dfs.namenode.file.close.num-committed-allowed", 16);
    // A lone DataNode: never try to replace it in a write pipeline.
    conf.set("dfs.client.block.write.replace-datanode-on-failure.enable", "false");
    // Notice a stopped DataNode quickly in the fault tests.
    conf.setInt("dfs.heartbeat.interval", 1);
    conf.setInt("dfs.namenode.heartbeat.recheck-interval", 5000);

    cluster = new MiniDFSCluster.Builder(conf, base)
        .nameNodePort(nnPort)
        .numDataNodes(1)
        .format(true)
        .build();
    cluster.waitActive();
    cluster.waitClusterUp();

    HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", controlPort), 16);
    server.createContext("/ready", ex -> {
      boolean ready;
      try {
        ready = cluster.isClusterUp() && !cluster.getNameNode().isInSafeMode()
            && cluster.getDataNodes().size() > 0;
      } catch (RuntimeException e) {
        ready = false;
      }
      reply(ex, ready ? 200 : 503, ready ? "ready" : "not ready");
    });
    server.createContext("/namenode/restart", ex -> control(ex, () -> {
      cluster.restartNameNode(true);
      cluster.waitClusterUp();
      cluster.waitActive();
    }));
    server.createContext("/namenode/stop", ex -> control(ex, () -> {
      cluster.shutdownNameNode(0);
    }));
    server.createContext("/namenode/start", ex -> control(ex, () -> {
      if (cluster.getNameNode(0) == null) {
        cluster.restartNameNode(0, true);
      }
      cluster.waitClusterUp();
      cluster.waitActive();
    }));
    server.createContext("/datanode/stop", ex -> control(ex, () -> {
      if (stoppedDataNode == null) {
        stoppedDataNode = cluster.stopDataNode(0);
      }
    }));
    server.createContext("/datanode/start", ex -> control(ex, () -> {
      if (stoppedDataNode != null) {
        cluster.restartDataNode(stoppedDataNode, true);
        stoppedDataNode = null;
        cluster.waitActive();
      }
    }));
    server.createContext("/shutdown", ex -> {
      reply(ex, 200, "bye");
      new Thread(() -> {
        cluster.shutdown();
        System.exit(0);
      }).start();
    });
    server.start();
    Runtime.getRuntime().addShutdownHook(new Thread(() -> cluster.shutdown()));
    System.out.println("MINIHDFS READY namenode=127.0.0.1:" + nnPort + " control=127.0.0.1:" + controlPort);
    System.out.flush();
  }

  interface Action {
    void run() throws Exception;
  }

  private static synchronized void control(HttpExchange ex, Action action) throws IOException {
    if (!"POST".equals(ex.getRequestMethod())) {
      reply(ex, 405, "POST only");
      return;
    }
    try {
      action.run();
      reply(ex, 200, "ok");
    } catch (Exception e) {
      e.printStackTrace();
      reply(ex, 500, e.toString());
    }
  }

  private static void reply(HttpExchange ex, int status, String body) throws IOException {
    byte[] b = (body + "\n").getBytes(StandardCharsets.UTF_8);
    ex.sendResponseHeaders(status, b.length);
    try (OutputStream os = ex.getResponseBody()) {
      os.write(b);
    }
  }
}
