/*
 * mock_cluster: run librdkafka's in-memory mock cluster as a standalone
 * process, so that any Kafka client (or librdkafka's own test suite, or
 * rdkafka_performance) can be pointed at it over TCP like a real broker.
 *
 * Usage: mock_cluster [-b BROKERS] [-t TOPIC:PARTITIONS]... [-f FILE]
 *   -b N            number of mock brokers (default 1)
 *   -t NAME:PARTS   pre-create a topic (the mock broker does not implement
 *                   CreateTopics; it auto-creates unknown topics with 4
 *                   partitions on Metadata requests)
 *   -f FILE         also write the bootstrap servers to FILE (atomically)
 *
 * Prints "bootstrap: HOST:PORT[,...]" on stdout once listening, then
 * sits until SIGTERM or SIGINT, and destroys the cluster.
 *
 * This file is part of Shale (Apache-2.0); it only links librdkafka.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

static volatile sig_atomic_t run = 1;

static void stop(int sig) {
        (void)sig;
        run = 0;
}

static void usage(const char *argv0) {
        fprintf(stderr,
                "Usage: %s [-b BROKERS] [-t TOPIC:PARTITIONS]... [-f FILE]\n",
                argv0);
        exit(2);
}

int main(int argc, char **argv) {
        int broker_cnt = 1;
        const char *topics[64];
        int topic_cnt       = 0;
        const char *outfile = NULL;
        char errstr[512];
        rd_kafka_conf_t *conf;
        rd_kafka_t *rk;
        rd_kafka_mock_cluster_t *mcluster;
        const char *bootstraps;
        struct sigaction sa;
        int opt, i;

        while ((opt = getopt(argc, argv, "b:t:f:h")) != -1) {
                switch (opt) {
                case 'b':
                        broker_cnt = atoi(optarg);
                        if (broker_cnt < 1)
                                usage(argv[0]);
                        break;
                case 't':
                        if (topic_cnt == 64)
                                usage(argv[0]);
                        topics[topic_cnt++] = optarg;
                        break;
                case 'f':
                        outfile = optarg;
                        break;
                default:
                        usage(argv[0]);
                }
        }

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = stop;
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);

        /* The rd_kafka_t is only used for the mock cluster's book keeping. */
        conf = rd_kafka_conf_new();
        if (rd_kafka_conf_set(conf, "log_level", "3", errstr,
                              sizeof(errstr)) != RD_KAFKA_CONF_OK) {
                fprintf(stderr, "mock_cluster: %s\n", errstr);
                return 1;
        }
        rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
        if (!rk) {
                fprintf(stderr, "mock_cluster: rd_kafka_new: %s\n", errstr);
                return 1;
        }

        mcluster = rd_kafka_mock_cluster_new(rk, broker_cnt);
        if (!mcluster) {
                fprintf(stderr, "mock_cluster: failed to create cluster\n");
                rd_kafka_destroy(rk);
                return 1;
        }

        for (i = 0; i < topic_cnt; i++) {
                char name[256];
                const char *colon = strrchr(topics[i], ':');
                int parts         = 1;
                size_t len        = strlen(topics[i]);
                rd_kafka_resp_err_t err;

                if (colon) {
                        parts = atoi(colon + 1);
                        len   = (size_t)(colon - topics[i]);
                }
                if (len == 0 || len >= sizeof(name) || parts < 1) {
                        fprintf(stderr, "mock_cluster: bad topic spec %s\n",
                                topics[i]);
                        return 2;
                }
                memcpy(name, topics[i], len);
                name[len] = '\0';
                err       = rd_kafka_mock_topic_create(
                    mcluster, name, parts, broker_cnt < 3 ? broker_cnt : 3);
                if (err) {
                        fprintf(stderr, "mock_cluster: create %s: %s\n", name,
                                rd_kafka_err2str(err));
                        return 1;
                }
        }

        bootstraps = rd_kafka_mock_cluster_bootstraps(mcluster);
        if (outfile) {
                char tmp[4096];
                FILE *fp;
                snprintf(tmp, sizeof(tmp), "%s.tmp", outfile);
                fp = fopen(tmp, "w");
                if (!fp || fprintf(fp, "%s\n", bootstraps) < 0 || fclose(fp) ||
                    rename(tmp, outfile)) {
                        perror("mock_cluster: write bootstrap file");
                        return 1;
                }
        }
        printf("bootstrap: %s\n", bootstraps);
        fflush(stdout);

        while (run)
                pause();

        rd_kafka_mock_cluster_destroy(mcluster);
        rd_kafka_destroy(rk);
        return 0;
}
