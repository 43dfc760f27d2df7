"""The `learned` ER backend's model, data, training and evaluation (no ROS imports); see
`er_perception.learned.model` for the design."""

TEST_SEED_OFFSET = 1_000_000      # test scenes' seeds: never those of a training set
