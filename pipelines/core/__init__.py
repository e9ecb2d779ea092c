"""The base every stage stands on: settings, the use-case spec, the lake's layout, the Spark session, the refusal errors."""
